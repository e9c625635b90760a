"""Several portal processes on one Redis behind the real nginx, for the cluster tests.

Each portal is `python portal.py` as production runs it: its own process, its own
waitress, its own reply-mail workers, configured only by its environment, its
output in its own log file. nginx (nginx.conf.example, rewritten as test_nginx
does) spreads the portal's locations round-robin over all of them. Everything
runs as the current user, writes under one folder, and is killed at the end
whatever happened.

The upstream holds the three instances, each left alone for `fail_timeout`
after one failure (`max_fails=1`: stricter than the example's suggestion, so the
first refused or dropped connection moves the traffic), and the request goes to
the next (`proxy_next_upstream error timeout`, as the example
writes it; nginx never sends a POST again once an instance received it). The
portal's own 502 and 503 answers must not be "next upstream" cases: they mean a
service every instance shares (Chatwoot, Redis) failed, and with `max_fails` a
few of them would mark every instance down, so customers would get nginx's bare
502 "no live upstreams" instead of the portal's page that keeps what they typed.
"""

import http.client
import os
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from browser import Browser
from test_nginx import Nginx, free_ports, main_config, site_config

ROOT = Path(__file__).resolve().parent.parent
BASE = "/portal"
UPSTREAM_SERVER = "server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;"
NEXT_UPSTREAM = "proxy_next_upstream error timeout;"
# One line per request in a portal's log (Portal.__call__): method, route, status.
REQUEST_LINE = re.compile(r" portal: request (\S+) (\S+) (\d{3}) [0-9.]+ms$", re.MULTILINE)


def get(port, path, timeout=5):
    """(status, body) of one GET straight to a port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class PortalProcess:
    """One `python portal.py` on its own port."""

    def __init__(self, name, port, environ, log_path):
        self.name, self.port, self.environ, self.log_path = name, port, environ, log_path
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([sys.executable, "portal.py"], cwd=ROOT, env=self.environ,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def wait_until_healthy(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                if get(self.port, BASE + "/healthz", timeout=2)[0] == 200:
                    return self
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not answer /healthz within {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL: no handler runs, nothing is flushed or released."""
        if self.running:
            self.process.kill()
        if self.process is not None:
            self.process.wait(timeout=10)

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self):
        """(method, route, status) of every request this instance logged, /healthz left out."""
        return [(method, route, int(status)) for method, route, status in REQUEST_LINE.findall(self.log())
                if route != "/healthz"]


class Cluster:
    """`count` portals on one STATE_URL and STATE_PREFIX, nginx in front."""

    def __init__(self, nginx_binary, directory, settings, chatwoot_url, count=3):
        self.nginx_binary, self.directory, self.settings = nginx_binary, directory, settings
        self.chatwoot_port = urllib.parse.urlsplit(chatwoot_url).port
        self.count = count
        self.portals = []
        self.nginx = None
        self.port = None

    def start(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port, redirect_port, *portal_ports = free_ports(2 + self.count)
        for number, port in enumerate(portal_ports):
            # A folder of its own, as on separate hosts: what the instances share is in Redis only.
            state_dir = self.directory / f"state{number}"
            state_dir.mkdir()
            environ = {**os.environ, **self.settings, "HOST": "127.0.0.1", "PORT": str(port),
                       # Links in mails point at nginx, as PORTAL_URL does in production.
                       "PORTAL_URL": f"http://127.0.0.1:{self.port}", "STATE_DIR": str(state_dir),
                       "PYTHONUNBUFFERED": "1"}
            self.portals.append(PortalProcess(f"portal {number}", port, environ,
                                              self.directory / f"portal{number}.log").start())
        for portal in self.portals:  # they start side by side; waiting is in turn
            portal.wait_until_healthy()
        self.nginx = Nginx(self.nginx_binary, self.directory, main_config(self.directory, self.site(redirect_port)))
        self.nginx.start(self.port)
        return self

    def site(self, redirect_port):
        """The example's site, its portal upstream made of every instance."""
        text = site_config(self.portals[0].port, self.chatwoot_port, self.port, redirect_port)

        def every_instance(match):
            others = re.sub(r"server\s+[^;]+;", "", match.group(1)).strip()
            servers = "".join(f"    {UPSTREAM_SERVER.format(port=portal.port)}\n" for portal in self.portals)
            return f"upstream chatwoot_portal {{\n{servers}    {others}\n}}"

        # The live block only: the example also shows the cluster's block, commented out.
        text, found = re.subn(r"(?m)^upstream\s+chatwoot_portal\s*\{([^}]*)\}", every_instance, text)
        assert found == 1, "nginx.conf.example has no single `upstream chatwoot_portal { ... }`"
        if not re.search(r"(?m)^\s*proxy_next_upstream\s", text):
            text, found = re.subn(r"(?m)^(\s*)(proxy_pass\s+http://chatwoot_portal;)", rf"\1\2\n\1{NEXT_UPSTREAM}", text)
            assert found >= 1, "nginx.conf.example proxies nothing to chatwoot_portal"
        assert not re.search(r"(?m)^\s*proxy_next_upstream\s.*http_50[23]", text), "see this module's docstring"
        return text

    def stop(self):
        if self.nginx is not None:
            self.nginx.stop()
        for portal in self.portals:
            portal.kill()

    def browser(self, **headers):
        """A browser that reaches the portals through nginx."""
        return Browser("127.0.0.1", self.port, headers)

    def direct(self, number, browser):
        """A browser straight to one instance, with a copy of `browser`'s cookies."""
        direct = Browser("127.0.0.1", self.portals[number].port, browser.extra_headers)
        direct.cookies = dict(browser.cookies)
        return direct
