# The authsvc image: the service alone, without the embedded PostgreSQL (compose brings a real one).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    AUTHSVC_DATA_DIR=/data

WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY authsvc ./authsvc
COPY migrations ./migrations
RUN pip install --no-cache-dir . && rm -rf /src

# An unprivileged user owns the data dir, so a named volume mounted there inherits it. Its
# ids are fixed, so that Kubernetes' runAsUser can name it (deploy/kubernetes/).
RUN groupadd --system --gid 10001 authsvc \
    && useradd --system --uid 10001 --gid authsvc --home-dir /data --create-home authsvc \
    && chmod 700 /data
USER authsvc
WORKDIR /data

EXPOSE 8080
CMD ["authsvc", "serve", "--host", "0.0.0.0", "--port", "8080"]
