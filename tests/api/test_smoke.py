from helpers import bearer, login, signup


async def test_signup_login_me(client):
    user = await signup(client, "Alice@Example.com", first_name="Alice")
    assert user["email"] == "Alice@Example.com"
    token = await login(client, "alice@example.com")
    resp = await client.get("/users/me", headers=bearer(token))
    assert resp.status == 200
    assert (await resp.json())["id"] == user["id"]
