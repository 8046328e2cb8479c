"""A real SMTP server for the notification tests (aiosmtpd, as Debian ships it).

usage: smtp_server.py PORT MODE CERT KEY USER PASSWORD OUTDIR
MODE is starttls (plain, STARTTLS required before anything else) or tls
(TLS from the first byte). AUTH is required, with USER and PASSWORD. Each
message is written to OUTDIR as N.eml, with N.json saying how it came
(envelope, TLS, login). Prints "ready" when it listens.
"""
import asyncio
import json
import os
import ssl
import sys
import warnings

warnings.simplefilter("ignore")  # aiosmtpd warns about AUTH over implicit TLS

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, mode, cert, key, user, password, outdir = sys.argv[1:8]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)


class Handler:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(outdir) if f.endswith(".eml")])
        base = os.path.join(outdir, str(n))
        meta = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "login": session.authenticated,
        }
        with open(base + ".json.tmp", "w") as f:
            json.dump(meta, f)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.rename(base + ".json.tmp", base + ".json")
        os.rename(base + ".eml.tmp", base + ".eml")
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    if (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == user.encode()
        and auth_data.password == password.encode()
    ):
        return AuthResult(success=True)
    return AuthResult(success=False, handled=False)


common = dict(
    hostname="127.0.0.1",
    port=int(port),
    authenticator=authenticate,
    auth_required=True,
)
if mode == "starttls":
    c = Controller(Handler(), tls_context=ctx, require_starttls=True, **common)
else:
    # The whole connection is TLS: a login over it is safe.
    c = Controller(Handler(), ssl_context=ctx, auth_require_tls=False, **common)
c.start()
print("ready", flush=True)
try:
    sys.stdin.read()  # until the test closes stdin (or is killed)
finally:
    c.stop()
