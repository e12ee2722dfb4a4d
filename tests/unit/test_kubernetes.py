"""deploy/kubernetes/, checked against the Kubernetes schemas and the settings, routes and
commands the app really has.

There is no cluster here: the schemas (bundled by kubernetes-validate, offline) say each
object is one the API server accepts, unknown fields included; the rest says the objects
mean what they should together and for authsvc.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_compose import _authsvc_commands

from authsvc import app as app_module
from authsvc import settings as config
from authsvc.cli import main as cli
from authsvc.cli import secretfiles
from authsvc.db.pool import CLIENT_MARGIN
from authsvc.http.views.health import READY_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
OPERATIONS = ROOT / "docs" / "operations.md"
# The oldest Kubernetes these manifests are for, and the newest the pinned validator knows.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# PostgreSQL's defaults: max_connections, of which superuser_reserved_connections are kept
# for superusers. A managed database may allow more; the manifests fit the default.
MAX_CONNECTIONS, RESERVED_CONNECTIONS = 100, 3
# Stands in for the Secret's value where a test parses the settings as a pod would.
DATABASE_URL = "postgresql://authsvc@db.example.internal:5432/authsvc"
# The direct connection for migrations behind PgBouncer, declared by the PgBouncer part of
# issue 13. Until that lands it is the one name here that authsvc does not know yet.
MIGRATE_URL = "AUTHSVC_MIGRATE_DATABASE_URL"


def _documents() -> dict[str, list[dict[str, Any]]]:
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(MANIFESTS.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    """Each object by kind (one of each here)."""
    found: dict[str, dict[str, Any]] = {}
    for docs in _documents().values():
        for doc in docs:
            assert doc["kind"] not in found, f"a second {doc['kind']}"
            found[doc["kind"]] = doc
    return found


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = _pod(workload)["containers"]
    return container


def _labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _env(objects: dict[str, dict[str, Any]], workload: dict[str, Any]) -> dict[str, str]:
    """The AUTHSVC_* variables the container gets: its ConfigMap's, then its own (a Secret's
    value stands in as a placeholder)."""
    container = _container(workload)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == objects["ConfigMap"]["metadata"]["name"]
        env.update(objects["ConfigMap"]["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", DATABASE_URL)
    return env


def _settings(objects: dict[str, dict[str, Any]], workload: dict[str, Any]) -> config.Settings:
    env = _env(objects, workload)
    if MIGRATE_URL not in _known():
        env.pop(MIGRATE_URL, None)
    return config.from_env(env)  # parses every value, as the app would


def _known() -> set[str]:
    return {config.env_name(name) for name in config.FIELDS}


def _secret_refs(workload: dict[str, Any]) -> dict[tuple[str, str], bool]:
    """(Secret, key) -> optional, for each Secret key the pod reads, as a variable or a file."""
    refs = {}
    for var in _container(workload).get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[(ref["name"], ref["key"])] = ref.get("optional", False)
    for volume in _pod(workload).get("volumes", []):
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                refs[(volume["secret"]["secretName"], item["key"])] = False
    return refs


def _seconds(probe: dict[str, Any]) -> int:
    """How long a probe takes to give up: Kubernetes' defaults where a field is left out."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


# --- the schemas ---


def _validate(doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(part) for part in exc.path)
        raise AssertionError(f"{doc['kind']} {doc['metadata']['name']}: {where}: {exc.message}") from None


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(_documents()))
def test_every_manifest_is_valid_kubernetes(name, version):
    docs = _documents()[name]
    assert docs, f"{name} holds no object"
    for doc in docs:
        _validate(doc, version)


def test_the_validation_is_strict():
    """An unknown field (a typo: `livenessprobe`) fails, as the API server would refuse it."""
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    container = _container(deployment)
    container["livenessprobe"] = container.pop("livenessProbe")
    with pytest.raises(AssertionError, match="livenessprobe"):
        _validate(deployment, KUBERNETES_VERSIONS[0])


def test_kustomization_lists_every_manifest_but_the_migrate_job(objects):
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    # The Job runs first, on its own: applied with the rest it would race the rollout.
    assert set(listed) == set(_documents()) - {"migrate-job.yaml"}
    assert [doc["kind"] for doc in _documents()["migrate-job.yaml"]] == ["Job"]
    assert set(objects) == {
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Job",
    }


# --- settings ---


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_every_variable_is_a_setting_the_app_reads(objects, kind):
    env = _env(objects, objects[kind])
    known = _known() | {MIGRATE_URL}  # see MIGRATE_URL; test_the_job_migrates_on_a_direct_connection
    assert set(env) <= known, f"unknown settings: {set(env) - known}"
    settings = _settings(objects, objects[kind])
    assert not settings.embedded
    assert settings.migrate_on_start is False, "only the Job migrates"


def test_the_job_migrates_on_a_direct_connection(objects):
    job = {var["name"]: var for var in _container(objects["Job"])["env"]}
    url = job[MIGRATE_URL]["valueFrom"]["secretKeyRef"]
    database = job["AUTHSVC_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert url["name"] == database["name"], "the same Secret as the database URL"
    assert url["key"] == "migrate-url" and url["optional"] is True, "without PgBouncer there is none"
    if MIGRATE_URL not in _known():
        pytest.skip(f"{MIGRATE_URL} is not declared yet (the PgBouncer part of issue 13)")
    env = {**_env(objects, objects["Job"]), MIGRATE_URL: "postgresql://authsvc@db-direct.example.internal/authsvc"}
    config.from_env(env)


def test_nothing_secret_is_in_the_config_map(objects):
    data = objects["ConfigMap"]["data"]
    assert set(data) <= _known()
    hidden = {config.env_name(name) for name, decl in config.DECLARATIONS.items() if decl.secret or decl.mask}
    assert not set(data) & hidden, "secrets and URLs that may hold a password come from Secrets"
    for kind in ("Deployment", "Job"):
        for var in _container(objects[kind])["env"]:
            assert "value" not in var, f"{var['name']}: from a Secret, not written in the manifest"


def test_the_pods_get_no_service_variables(objects):
    # Service links name variables after each Service of the namespace; for this one, called
    # authsvc, they would be AUTHSVC_SERVICE_HOST, AUTHSVC_PORT=tcp://... and the like, which
    # authsvc refuses at start (an unknown setting, a port that is no number).
    prefix = objects["Service"]["metadata"]["name"].upper().replace("-", "_")
    links = {f"{prefix}_SERVICE_HOST": "10.96.0.10", f"{prefix}_PORT": "tcp://10.96.0.10:80"}
    with pytest.raises(config.ConfigError):
        config.from_env({**objects["ConfigMap"]["data"], **links})
    for kind in ("Deployment", "Job"):
        assert _pod(objects[kind])["enableServiceLinks"] is False, kind


def test_trusted_proxies_are_a_private_range(objects):
    trusted = _settings(objects, objects["Deployment"]).trusted_proxies
    # Without any, every client would look like the ingress, and share its login budgets.
    assert trusted
    for net in trusted:
        private = [p for p in config.PRIVATE_NETWORKS if p.version == net.version]
        # A proxy's X-Forwarded-For is believed: anyone in a public range could pick an address.
        assert any(net.subnet_of(p) for p in private), net  # type: ignore[arg-type]


# --- the pods: ports, probes, stopping ---


def _routes() -> dict[str, Any]:
    """GET routes of the app as the ConfigMap configures it, by path."""
    settings = config.from_env(
        {
            "AUTHSVC_DATABASE_URL": DATABASE_URL,  # not connected to: the app is built, never started
            "AUTHSVC_TOKEN_ALGORITHM": "HS256",  # no key file to read
            "AUTHSVC_TOKEN_SECRET": "t" * 8 + "0123456789abcdefghijklmnopqrstuvwxyz",
            "AUTHSVC_PASSWORD_PEPPER": "p" * 8 + "abcdefghijklmnopqrstuvwxyz0123456789",
        }
    )
    app = app_module.create_app(settings)
    return {
        route.resource.canonical: route.handler
        for route in app.router.routes()
        if route.method == "GET" and route.resource is not None
    }


def test_the_port_is_the_one_authsvc_listens_on(objects):
    deployment, service = objects["Deployment"], objects["Service"]
    settings = _settings(objects, deployment)
    argv = _container(deployment)["command"]
    args = cli._parser().parse_args(argv[1:])
    assert argv[:2] == ["authsvc", "serve"]
    assert args.host is None and args.port is None, "host and port come from the ConfigMap"
    assert ipaddress.ip_address(settings.host).is_unspecified, "the kubelet probes the pod's address"
    (port,) = _container(deployment)["ports"]
    assert port["containerPort"] == settings.port
    (exposed,) = service["spec"]["ports"]
    assert exposed["targetPort"] in (port["name"], port["containerPort"])


def test_probes_ask_what_they_mean(objects):
    container = _container(objects["Deployment"])
    routes = _routes()
    port_names = {port["name"] for port in container["ports"]}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container[kind]["httpGet"]
        assert probe["port"] in port_names, kind
        handler = routes.get(probe["path"])
        assert handler is not None, f"{kind}: {probe['path']} is no route"
        assert getattr(handler, "authsvc_public", False), f"{kind}: the kubelet sends no bearer token"
    # Liveness never asks the database: an outage would restart every pod and cure nothing.
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # /readyz answers 503 within READY_TIMEOUT when the database does not: let it say so.
    assert container["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT


def test_a_slow_start_is_not_taken_for_a_dead_one(objects):
    container = _container(objects["Deployment"])
    settings = _settings(objects, objects["Deployment"])
    # The port opens at the latest once the database had connect + statement timeout to
    # answer (see db.pool.opened); liveness only starts once the startup probe passed.
    assert _seconds(container["startupProbe"]) > 2 * (settings.db_connect_timeout + settings.db_statement_timeout)
    assert _seconds(container["livenessProbe"]) >= 3 * container["livenessProbe"]["timeoutSeconds"]


def test_termination_grace_outlasts_the_worst_stop(objects):
    pod = _pod(objects["Deployment"])
    settings = _settings(objects, objects["Deployment"])
    pre_stop = _container(objects["Deployment"])["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # Before SIGTERM: the endpoints drop the pod while it still serves.
    drain = int(pre_stop[1])
    assert drain >= 3
    # After it: requests in flight get the shutdown timeout, the cancelled ones as long again,
    # then the cleanup's bounded tries with the database gone (refused-login rows, login
    # claims: throttle.running; the pool's close: db.pool.Database.close).
    requests = 2 * settings.shutdown_timeout
    cleanup = 2 * (settings.db_acquire_timeout + settings.db_statement_timeout + CLIENT_MARGIN)
    cleanup += settings.db_statement_timeout + CLIENT_MARGIN
    assert pod["terminationGracePeriodSeconds"] > drain + requests + cleanup


# --- secrets, files and users ---


def _secret_files(deployment: dict[str, Any]) -> dict[Path, tuple[str, str]]:
    """Each file the pods get from a Secret: its path in the pod -> (Secret, key)."""
    mounts = {mount["name"]: mount for mount in _container(deployment)["volumeMounts"]}
    files = {}
    for volume in _pod(deployment)["volumes"]:
        if "secret" in volume:
            for item in volume["secret"]["items"]:
                files[Path(mounts[volume["name"]]["mountPath"]) / item["path"]] = (
                    volume["secret"]["secretName"],
                    item["key"],
                )
    return files


def test_secrets_are_mounted_read_only_where_authsvc_reads_them(objects):
    deployment = objects["Deployment"]
    pod, container = _pod(deployment), _container(deployment)
    settings = _settings(objects, deployment)
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    for volume in pod["volumes"]:
        if "secret" not in volume:
            continue
        mount = mounts[volume["name"]]
        assert mount["readOnly"] is True, volume["name"]
        # A subPath mount is never updated: a rotated key would not reach the running pods.
        assert "subPath" not in mount, volume["name"]
        mode = volume["secret"]["defaultMode"]
        assert mode & 0o007 == 0 and mode & 0o040, f"{volume['name']}: readable by the pod's group alone"
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    files = _secret_files(deployment)
    pepper = secretfiles.secret_path(settings.data_dir, "password_pepper")
    assert set(files) == {pepper, settings.keys_file}
    assert settings.token_algorithm != "HS256", "a key file, not a token secret"
    assert files[pepper][0] != files[settings.keys_file][0], "the keys rotate, the pepper never"


def test_the_documented_commands_create_the_secrets_the_pods_read(objects):
    section = OPERATIONS.read_text().split("\n## Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    command = " ".join(section.replace("\\\n", " ").split())
    created: dict[tuple[str, str], set[Path]] = {}
    for match in re.finditer(r"kubectl create secret generic (\S+)((?: --from-file=\S+)+)", command):
        for option in shlex.split(match.group(2)):
            key, _, path = option.removeprefix("--from-file=").partition("=")
            created.setdefault((match.group(1), key), set()).add(Path(path))
    needed: dict[tuple[str, str], bool] = {}
    for kind in ("Deployment", "Job"):
        needed |= _secret_refs(objects[kind])
    assert {ref for ref, optional in needed.items() if not optional} <= set(created)
    assert set(created) <= set(needed), "the docs create nothing the pods do not read"
    # Each file the pods read is made from the one `authsvc secrets init` wrote for it.
    data_dir = Path(re.search(r"AUTHSVC_DATA_DIR=(\S+) authsvc secrets init", command).group(1))
    made, pod = config.Settings(data_dir=data_dir), _settings(objects, objects["Deployment"])
    files = _secret_files(objects["Deployment"])
    pepper = secretfiles.secret_path(pod.data_dir, "password_pepper")
    assert secretfiles.secret_path(made.data_dir, "password_pepper") in created[files[pepper]]
    assert made.keys_file in created[files[pod.keys_file]]


def test_pods_run_unprivileged_on_a_read_only_root(objects):
    uid = int(re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for kind in ("Deployment", "Job"):
        pod, container = _pod(objects[kind]), _container(objects[kind])
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid, f"{kind}: the image's user, who owns its data dir"
        assert pod["automountServiceAccountToken"] is False, "authsvc never calls the cluster API"
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    # What authsvc writes: tempfile's directory (serve --workers N keeps its metrics there).
    pod, container = _pod(objects["Deployment"]), _container(objects["Deployment"])
    scratch = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    writable = {mount["mountPath"] for mount in container["volumeMounts"] if mount["name"] in scratch}
    assert writable == {"/tmp"}
    assert not any(mount.get("readOnly") for mount in container["volumeMounts"] if mount["name"] in scratch)


def test_the_image_is_the_same_and_pinned(objects):
    images = {kind: _container(objects[kind])["image"] for kind in ("Deployment", "Job")}
    assert len(set(images.values())) == 1, images
    image = images["Deployment"]
    name, _, tag = image.rpartition(":")
    assert "/" not in tag and tag and tag != "latest", f"{image}: a pinned tag, so the Job migrates for these pods"


# --- the migrate Job ---


def test_the_job_migrates_once_and_waits_for_the_database(objects):
    job = objects["Job"]
    (argv,) = _authsvc_commands({"command": _container(job)["command"]})
    args = cli._parser().parse_args(argv[1:])
    assert argv[0] == "authsvc" and args.command == "migrate"
    assert 10 <= args.wait <= 300, args.wait  # as the compose job
    assert _pod(job)["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] <= 3
    assert job["spec"]["activeDeadlineSeconds"] > args.wait
    assert "secrets" not in argv, "the Secrets are made once, by an operator"


# --- scaling: Service, PodDisruptionBudget, HorizontalPodAutoscaler ---


def test_the_service_sends_to_the_pods_and_never_to_the_job(objects):
    selector = objects["Service"]["spec"]["selector"]
    assert _selects(selector, _labels(objects["Deployment"]))
    assert not _selects(selector, _labels(objects["Job"]))


def test_the_deployment_selects_its_own_pods(objects):
    deployment = objects["Deployment"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], _labels(deployment))
    assert not _selects(deployment["spec"]["selector"]["matchLabels"], _labels(objects["Job"]))
    # The HPA sets the count: a `replicas` here would undo its scale-up at every apply.
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_disruption_budget_covers_the_deployment_and_leaves_one_pod(objects):
    pdb, hpa = objects["PodDisruptionBudget"], objects["HorizontalPodAutoscaler"]
    assert pdb["spec"]["selector"]["matchLabels"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["minReplicas"] - pdb["spec"]["maxUnavailable"] >= 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "unready pods must not block a drain"


def test_the_autoscaler_scales_the_deployment_on_cpu(objects):
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    # A utilization is a share of the request: every container must have one.
    for container in _pod(deployment)["containers"]:
        assert container["resources"]["requests"]["cpu"]


def _cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_one_worker_and_as_many_bcrypt_threads_as_the_cpu_limit(objects):
    settings = _settings(objects, objects["Deployment"])
    resources = _container(objects["Deployment"])["resources"]
    assert settings.workers == 1, "pods scale out; the HPA counts pods"
    # Left to its default, the number of cores, it would count the node's cores.
    assert "AUTHSVC_HASH_WORKERS" in objects["ConfigMap"]["data"]
    assert settings.hash_workers <= _cores(resources["limits"]["cpu"])
    assert _cores(resources["requests"]["cpu"]) <= _cores(resources["limits"]["cpu"])
    for key in ("requests", "limits"):
        assert resources[key]["memory"]


def test_the_connections_fit_the_database(objects):
    hpa, deployment = objects["HorizontalPodAutoscaler"], objects["Deployment"]
    settings = _settings(objects, deployment)
    pods = hpa["spec"]["maxReplicas"] + deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    migrate = 1  # `authsvc migrate` holds one connection
    assert pods * settings.workers * settings.db_pool_max + migrate <= MAX_CONNECTIONS - RESERVED_CONNECTIONS
