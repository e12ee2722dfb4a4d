"""/admin/users: any user's account, for a caller with scope `admin` (a user, client or key)."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from authsvc.appkeys import PRINCIPAL, USER_ADMIN
from authsvc.http.answers import json_response
from authsvc.http.bodies import read_json, read_query
from authsvc.http.middlewares import ANY, requires
from authsvc.http.schemas import AdminUserListQuery, RolesSchema, admin_user_json
from authsvc.http.views.common import client_address, path_id

routes = web.RouteTableDef()

list_query = AdminUserListQuery()
roles_schema = RolesSchema()


def next_link(last_id: int, limit: int, email_prefix: str | None) -> str:
    """RFC 8288 Link to the page after `last_id`, same limit and prefix, relative to this host."""
    query = {"after": last_id, "limit": limit}
    if email_prefix is not None:
        query["email_prefix"] = email_prefix
    return f'</admin/users?{urlencode(query)}>; rel="next"'


@routes.get("/admin/users")
@requires("admin", subjects=ANY)
async def list_users(request: web.Request) -> web.Response:
    query = read_query(request, list_query)
    limit, prefix = query["limit"], query.get("email_prefix")
    page = await request.app[USER_ADMIN].search(prefix, query["after"], limit)
    # A full page may have a next one; a short page is the last.
    headers = {"Link": next_link(page[-1].id, limit, prefix)} if len(page) == limit else None
    return json_response([admin_user_json(user) for user in page], headers=headers)


@routes.get("/admin/users/{id}")
@requires("admin", subjects=ANY)
async def get_user(request: web.Request) -> web.Response:
    user = await request.app[USER_ADMIN].get(path_id(request, "user"))
    return json_response(admin_user_json(user))


@routes.post("/admin/users/{id}/disable")
@requires("admin", subjects=ANY)
async def disable_user(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    change = await request.app[USER_ADMIN].disable(request[PRINCIPAL], user_id, client_address(request))
    return json_response(admin_user_json(change.user))


@routes.post("/admin/users/{id}/enable")
@requires("admin", subjects=ANY)
async def enable_user(request: web.Request) -> web.Response:
    change = await request.app[USER_ADMIN].enable(request[PRINCIPAL], path_id(request, "user"), client_address(request))
    return json_response(admin_user_json(change.user))


@routes.delete("/admin/users/{id}")
@requires("admin", subjects=ANY)
async def delete_user(request: web.Request) -> web.Response:
    await request.app[USER_ADMIN].delete(request[PRINCIPAL], path_id(request, "user"), client_address(request))
    return web.Response(status=204)


@routes.put("/admin/users/{id}/roles")
@requires("admin", subjects=ANY)
async def set_roles(request: web.Request) -> web.Response:
    user_id = path_id(request, "user")
    data = await read_json(request, roles_schema)
    change = await request.app[USER_ADMIN].set_roles(
        request[PRINCIPAL], user_id, data["roles"], client_address(request)
    )
    return json_response(admin_user_json(change.user))
