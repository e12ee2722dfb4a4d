#!/usr/bin/env bash
# authsvc as a new user meets it, one HTTP call after another, against a running server:
#
#   docs/walkthrough.sh [BASE_URL]        (default http://127.0.0.1:8080)
#
# Every call is a plain curl command. `call` runs it, prints the HTTP status with the method
# and path, and stops the script (exit 1, with the answer's body) when the status is not the
# one written before the command. It signs up ada@example.com, so it runs once per database:
# a second run stops at the signup with 409 email_taken.
#
# README.md shows this file from the walkthrough marker on, and tests/test_walkthrough.py
# checks that it is the same there and runs it against a real server.
set -euo pipefail

BASE=${1:-http://127.0.0.1:8080}
BASE=${BASE%/}
ANSWER=$(mktemp)
trap 'rm -f "$ANSWER"' EXIT

call() {  # call EXPECTED_STATUS curl ARGS...
  local expected=$1 method=GET path= arg previous= status
  shift
  for arg in "$@"; do
    if [ "$previous" = -X ]; then method=$arg; fi
    case $arg in "$BASE"/*) path=${arg#"$BASE"} ;; esac
    previous=$arg
  done
  status=$("$@" -sS -o "$ANSWER" -w '%{http_code}')
  echo "$status $method $path"
  if [ "$status" != "$expected" ]; then
    echo "expected $expected, got $status: $(cat "$ANSWER")" >&2
    exit 1
  fi
}

field() {  # field NAME: that field of the last answer's JSON body
  python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$ANSWER" "$1"
}

JSON='Content-Type: application/json'

# --- walkthrough ---
# Sign up. A common password, or one made from the email or the names, is refused with 422.
call 201 curl -X POST "$BASE/users" -H "$JSON" \
     -d '{"email": "ada@example.com", "password": "correct horse battery staple", "first_name": "Ada"}'

# Log in ("username" or "email": both mean the account's email). The answer holds a
# short-lived access token (a JWT, sent as a bearer token) and a refresh token.
call 200 curl -X POST "$BASE/auth" -H "$JSON" \
     -d '{"username": "ada@example.com", "password": "correct horse battery staple"}'
AUTH="Authorization: Bearer $(field access_token)"
REFRESH=$(field refresh_token)

# Who am I; change a name (null clears one).
call 200 curl "$BASE/users/me" -H "$AUTH"
call 200 curl -X PATCH "$BASE/users/me" -H "$AUTH" -H "$JSON" -d '{"last_name": "Lovelace"}'

# Todos: each user sees only their own (another user's todo is 404, like a missing one).
call 201 curl -X POST "$BASE/todos" -H "$AUTH" -H "$JSON" -d '{"text": "read the docs"}'
TODO=$(field id)
# Pages of 20, open ones only; a full page's `Link: <...>; rel="next"` header names the next
# page (`after=<the last id>`), which costs what the first one does however deep it is.
call 200 curl "$BASE/todos?limit=20&completed=false" -H "$AUTH"
call 200 curl "$BASE/todos?after=$TODO&limit=20&completed=false" -H "$AUTH"
call 200 curl "$BASE/todos/$TODO" -H "$AUTH"
call 200 curl -X PATCH "$BASE/todos/$TODO" -H "$AUTH" -H "$JSON" -d '{"completed": true}'
call 200 curl -X PUT "$BASE/todos/$TODO" -H "$AUTH" -H "$JSON" \
     -d '{"text": "read docs/api.md", "completed": false}'
call 204 curl -X DELETE "$BASE/todos/$TODO" -H "$AUTH"

# An API key, for a script: it acts for the user with its own scopes (here todos only), is
# shown once, and stops working the moment it is deleted. It cannot make keys or log out.
call 201 curl -X POST "$BASE/users/me/api-keys" -H "$AUTH" -H "$JSON" \
     -d '{"name": "backup script", "scopes": ["todos"]}'
KEY="Authorization: Bearer $(field key)"
KEY_ID=$(field id)
call 200 curl "$BASE/todos" -H "$KEY"
call 403 curl "$BASE/users/me" -H "$KEY"
call 200 curl "$BASE/users/me/api-keys" -H "$AUTH"
call 204 curl -X DELETE "$BASE/users/me/api-keys/$KEY_ID" -H "$AUTH"
call 401 curl "$BASE/todos" -H "$KEY"

# Before the access token runs out (15 minutes): a new pair. A refresh token works once,
# so from here on the new pair is used. OAuth2 client libraries refresh at /auth/token.
call 200 curl -X POST "$BASE/auth/refresh" -H "$JSON" -d "{\"refresh_token\": \"$REFRESH\"}"
AUTH="Authorization: Bearer $(field access_token)"
REFRESH=$(field refresh_token)
call 200 curl -X POST "$BASE/auth/token" -d grant_type=refresh_token -d "refresh_token=$REFRESH"
AUTH="Authorization: Bearer $(field access_token)"

# Change the password: the user's other sessions end, this one goes on. The new password
# must be a strong one too (422 otherwise).
call 204 curl -X POST "$BASE/users/me/password" -H "$AUTH" -H "$JSON" \
     -d '{"current_password": "correct horse battery staple", "new_password": "tangerine walrus on a unicycle"}'

# Log in with the new password: a second session, as from another device.
call 200 curl -X POST "$BASE/auth" -H "$JSON" \
     -d '{"username": "ada@example.com", "password": "tangerine walrus on a unicycle"}'
OTHER="Authorization: Bearer $(field access_token)"

# What other services fetch to verify access tokens themselves (see docs/verifier.md).
call 200 curl "$BASE/.well-known/jwks.json"
call 200 curl "$BASE/.well-known/oauth-authorization-server"

# Log out: that session only, then every session of the user.
call 204 curl -X POST "$BASE/auth/logout" -H "$OTHER"
call 204 curl -X POST "$BASE/auth/logout?scope=all" -H "$AUTH"
