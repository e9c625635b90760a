"""Benchmark: Chatwoot calls per action, page latency, throughput, overhead, memory.

    python bench/bench.py [--delay-ms 20] [--requests 200] [--concurrency 16] [--flood 20000] [--webhooks 500]

Starts the fake Chatwoot (in this process) answering every API call after
`--delay-ms`, a real SMTP server, and the portal as a separate process (so its
memory is its own), signs in, and prints a table. "Overhead" is the page's p50
minus the upstream delay it cannot avoid (one delay: a ticket page's two calls run
side by side). Figures vary with the machine; run it twice before comparing.

Then a burst of Chatwoot webhooks: `--webhooks` agent replies on as many tickets,
each delivered twice in shuffled order and signed as Chatwoot signs them; it
prints how fast the portal answers them and checks that exactly one mail per
reply arrives.

Last, the two state backends side by side: two fresh portals, the same but for
STATE_URL (one on a redis-server the bench starts on a free port, keys under
"bench:"), the same pages with the upstream instant so the store's cost shows.
The two take turns request by request, and at concurrency batch by batch, so
whatever else the machine does weighs on both alike. Redis round trips per
request come from the server's INFO. Without redis-server the Redis column is
skipped with a note.
"""

import argparse
import collections
import email
import email.policy
import hashlib
import hmac
import http.client
import importlib.util
import itertools
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from aiosmtpd.controller import Controller  # noqa: E402

from browser import Browser, encode_multipart  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402
from redis_server import RedisServer  # noqa: E402


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_kib(pid, field="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_together(functions):
    """Run each function in its own thread; seconds until the last one finished."""
    threads = [threading.Thread(target=function) for function in functions]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


WEBHOOK_SECRET = "bench-webhook-secret-0123456789"


class PortalDidNotStart(Exception):
    """A portal process exited, or did not listen, at start."""


class PortalProcess:
    """One portal process on a free port, its log lines in a temporary file.

    `env` is everything but the address: PORT, PORTAL_URL and (unless given) a fresh
    STATE_DIR are its own. Started at once; `wait_until_listening` before use.
    """

    def __init__(self, env):
        self.port = free_port()
        handle, self.log_path = tempfile.mkstemp(prefix="portal-bench-", suffix=".log")
        os.close(handle)
        env = dict(env, PORT=str(self.port), PORTAL_URL=f"http://127.0.0.1:{self.port}")
        self._own_state_dir = None if "STATE_DIR" in env else tempfile.mkdtemp(prefix="portal-bench-")
        env.setdefault("STATE_DIR", self._own_state_dir)
        # The portal appends; the bench reads through handles of its own, so reading
        # (and seeking) never moves where the portal writes.
        with open(self.log_path, "a") as output:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "portal.py")], cwd=ROOT, env=env,
                                            stdout=output, stderr=subprocess.STDOUT)
        self.log = open(self.log_path)
        self._tail, self._partial = open(self.log_path), ""

    def wait_until_listening(self, seconds=30):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PortalDidNotStart(f"the portal exited at start ({self.last_log_line()})")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise PortalDidNotStart(f"the portal did not start listening within {seconds} s")

    def last_log_line(self):
        self.log.seek(0)
        lines = [line.strip() for line in self.log if line.strip()]
        return lines[-1] if lines else "no output"

    def request_times(self):
        """ms the portal logged for each request since the last call (its own time,
        from the request's arrival to its answer; the client's side is not in it)."""
        text = self._partial + self._tail.read()
        complete, _, self._partial = text.rpartition("\n")  # a line being written waits for next time
        return [float(ms) for ms in re.findall(r" request [A-Z]+ \S+ \d{3} ([\d.]+)ms$", complete, re.MULTILINE)]

    def close(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()
        self._tail.close()
        os.unlink(self.log_path)
        if self._own_state_dir:
            shutil.rmtree(self._own_state_dir, ignore_errors=True)


class Bench:
    def __init__(self, args):
        self.args = args
        self.fake = FakeChatwoot(token="bench-token").start()
        self.inbox = self.fake.add_inbox("Customer Portal", "Channel::Api")
        self.contact = self.fake.add_contact("Jane Doe", "jane@example.com")
        other = self.fake.add_contact("Bob Stone", "bob@example.com")
        for n in range(8):
            ticket = self.fake.add_conversation(self.contact, self.inbox, f"Ticket {n}", "open")
            for m in range(6):
                self.fake.add_message(ticket, f"Message {m} of ticket {n}", "incoming" if m % 2 == 0 else "outgoing")
        self.ticket = ticket  # 6 messages: within one page
        self.long_ticket = self.fake.add_conversation(self.contact, self.inbox, "A long story", "open")
        for m in range(500):
            text = (f"Customer line {m}\nwith a second line" if m % 2 == 0
                    else f"Agent answer {m} with **bold**, `code` and https://example.com/{m}")
            self.fake.add_message(self.long_ticket, text, "incoming" if m % 2 == 0 else "outgoing")
        self.fake.add_conversation(other, self.inbox, "Someone else's", "open")
        self.burst_contact = self.fake.add_contact("Burst Customer", "burst@example.com")
        # A customer with a long history: 500 tickets, a third of them still open.
        self.big_contact = self.fake.add_contact("Busy Customer", "busy@example.com")
        for n in range(500):
            self.fake.add_conversation(self.big_contact, self.inbox, f"Order {n} question",
                                       "open" if n % 3 == 0 else "resolved")
        self.mailbox = Mailbox()
        smtp_port = free_port()
        self.smtp = Controller(self.mailbox, hostname="127.0.0.1", port=smtp_port)
        self.smtp.start()
        # What every portal of the bench shares: this fake Chatwoot, this SMTP server.
        self.env = dict(os.environ, HOST="127.0.0.1", BASE_PATH="/portal", CHATWOOT_URL=self.fake.url,
                        CHATWOOT_API_TOKEN=self.fake.token, CHATWOOT_ACCOUNT_ID=str(self.fake.account_id),
                        CHATWOOT_INBOX_ID=str(self.inbox), SESSION_SECRET="bench-" + "x" * 40,
                        SMTP_ADDRESS="127.0.0.1", SMTP_PORT=str(smtp_port), SMTP_SECURITY="none",
                        SMTP_FROM="support@example.com", PYTHONUNBUFFERED="1",
                        WEBHOOK_SECRET=WEBHOOK_SECRET, NOTIFY_DELAY_SECONDS="0")
        self.env.pop("STATE_URL", None)  # the main portal is the memory backend, whatever the shell says
        self.portal = PortalProcess(self.env)
        try:
            self.portal.wait_until_listening()
        except PortalDidNotStart as error:
            raise SystemExit(f"{error}; run `python portal.py` to see why") from None
        self.port, self.process = self.portal.port, self.portal.process
        # The portal's own log lines time each request inside the portal.
        self.log = self.portal.log

    def close(self):
        self.portal.close()
        self.smtp.stop()
        self.fake.stop()

    def browser(self, port=None):
        return Browser("127.0.0.1", port or self.port)

    def sign_in(self, address="jane@example.com", port=None):
        browser = self.browser(port)
        page = browser.submit(browser.get("/portal/"), "/auth/request", email=address)
        text = self.mailbox.messages[-1].get_body(("plain",)).get_content()
        link = re.search(r"http://\S+/auth/verify\?token=[\w-]+", text).group(0)
        page = browser.get(urllib.parse.urlsplit(link)._replace(scheme="", netloc="").geturl())
        browser.submit(page, "/auth/verify")
        return browser

    # -- measurements -------------------------------------------------------

    def calls_per_action(self):
        counts = {}

        def count(name, action):
            self.fake.reset_calls()
            action()
            counts[name] = len(self.fake.calls)

        browser = self.browser()
        page = browser.get("/portal/")
        count("request a magic link (known address)",
              lambda: browser.submit(page, "/auth/request", email="jane@example.com", follow=False))
        signed_in = self.sign_in()
        count("dashboard", lambda: signed_in.get("/portal/dashboard"))
        count("ticket page", lambda: signed_in.get(f"/portal/tickets/{self.ticket}"))
        ticket_page = signed_in.get(f"/portal/tickets/{self.ticket}")
        count("reply", lambda: signed_in.submit(ticket_page, f"/tickets/{self.ticket}/reply",
                                                message="bench reply", follow=False))
        new_page = signed_in.get("/portal/tickets/new")
        count("create ticket", lambda: signed_in.submit(new_page, "/tickets", subject="Bench",
                                                        message="bench", follow=False))
        ticket_page = signed_in.get(f"/portal/tickets/{self.ticket}")
        count("cancel", lambda: signed_in.submit(ticket_page, f"/tickets/{self.ticket}/cancel", follow=False))
        return counts

    def logged_page_times(self, count):
        """(portal's time, Chatwoot's time) in ms for the last `count` ticket pages, from the log.

        A ticket page's two calls run side by side, so its Chatwoot time is the
        longer of the two calls logged just before the page.
        """
        self.log.seek(0)
        pages, calls = [], []
        for line in self.log:
            chatwoot = re.search(r"chatwoot GET /conversations/:id(?:/messages)? \d+ ([\d.]+)ms", line)
            page = re.search(r"request GET /tickets/:ticket_id 200 ([\d.]+)ms", line)
            if chatwoot:
                calls.append(float(chatwoot.group(1)))
            elif page:
                pages.append((float(page.group(1)), max(calls[-2:] or [0.0])))
                calls = []
        return pages[-count:]

    def sequential(self, browser, path, n):
        times = []
        for _ in range(n):
            started = time.perf_counter()
            page = browser.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert page.status == 200, page.status
        return times

    def concurrent(self, cookies, path, n, concurrency):
        times, lock = [], threading.Lock()
        per_worker = max(1, n // concurrency)

        def worker():
            browser = self.browser()
            browser.cookies = dict(cookies)
            mine = self.sequential(browser, path, per_worker)
            with lock:
                times.extend(mine)

        elapsed = run_together([worker] * concurrency)
        return times, len(times) / elapsed

    def transfer_memory(self, browser, clients=4, megabytes=10):
        """Peak RSS of the portal while `clients` upload, then download, a file each at once.

        Returns {"upload": (rss before, peak), "download": (rss before, peak)} in KiB
        and the seconds each phase took.
        """
        data = b"%PDF-1.7\n" + bytes(range(256)) * (megabytes * 1024 * 1024 // 256 - 1)
        ticket = self.fake.add_conversation(self.contact, self.inbox, "Big files", "open")
        # One page (one form id) per client: each upload is its own reply.
        pages = [browser.get(f"/portal/tickets/{ticket}") for _ in range(clients)]
        figures = {}

        def sampled(phase, work):
            peak, stop = [rss_kib(self.process.pid)], threading.Event()
            before = peak[0]

            def sample():
                while not stop.is_set():
                    peak.append(rss_kib(self.process.pid))
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            seconds = run_together([lambda n=n: work(n) for n in range(clients)])
            stop.set()
            sampler.join()
            figures[phase] = (before, max(peak), seconds)

        def upload(number):
            mine = self.browser()
            mine.cookies = dict(browser.cookies)
            answer = mine.submit(pages[number], f"/tickets/{ticket}/reply", message=f"upload {number}",
                                 files=[("files", f"big{number}.pdf", data)], follow=False)
            assert answer.status == 303, answer.status

        def download(number):
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
            connection.request("GET", f"/portal/tickets/{ticket}/attachments/{files[number]}", headers={"Cookie": cookie})
            response = connection.getresponse()
            received = 0
            while chunk := response.read(256 * 1024):
                received += len(chunk)
                time.sleep(0.002)  # a client slower than the loopback
            assert response.status == 200 and received == len(data), (response.status, received)
            connection.close()

        sampled("upload", upload)
        files = [a["id"] for m in self.fake.messages_of(ticket) for a in m["attachments"]]
        assert len(files) == clients, files
        browser.get(f"/portal/tickets/{ticket}")  # as a customer does before clicking
        sampled("download", download)
        return figures

    def webhook_burst(self, replies, concurrency):
        """`replies` agent replies on as many tickets, each delivered twice, shuffled.

        Returns (per-request ms, statuses, seconds of the burst, reply mails that
        arrived, mails that arrived twice, seconds until the last mail).
        """
        deliveries = []
        for n in range(replies):
            ticket = self.fake.add_conversation(self.burst_contact, self.inbox, f"Burst {n}", "open")
            message = self.fake.add_message(ticket, f"Burst reply {n}", "outgoing")
            deliveries += [self.fake.webhook_body(message)] * 2  # Chatwoot's duplicates
        random.Random(1).shuffle(deliveries)
        times, statuses, lock = [], collections.Counter(), threading.Lock()
        queue = list(deliveries)

        def worker():
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            while True:
                with lock:
                    if not queue:
                        break
                    body = queue.pop()
                timestamp = str(int(time.time()))
                digest = hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                started = time.perf_counter()
                connection.request("POST", "/portal/webhooks/chatwoot", body=body, headers={
                    "Content-Type": "application/json", "X-Chatwoot-Timestamp": timestamp,
                    "X-Chatwoot-Signature": f"sha256={digest}"})
                response = connection.getresponse()
                response.read()
                with lock:
                    times.append((time.perf_counter() - started) * 1000)
                    statuses[response.status] += 1
            connection.close()

        started = time.perf_counter()
        elapsed = run_together([worker] * concurrency)

        def reply_mails():
            return [m["Subject"] for m in list(self.mailbox.messages) if "Burst" in (m["Subject"] or "")]

        deadline = time.monotonic() + 120
        while len(reply_mails()) < replies and time.monotonic() < deadline:
            time.sleep(0.05)
        last_mail = time.perf_counter() - started
        time.sleep(2)  # any mail sent twice would arrive now
        subjects = reply_mails()
        twice = sum(count - 1 for count in collections.Counter(subjects).values() if count > 1)
        return times, statuses, elapsed, len(set(subjects)), twice, last_mail

    # -- the state backends side by side ---------------------------------------

    def backend_pages(self, port, reply_ticket):
        """{page: make(number) -> request} on one portal: the pages that read or write
        state on every request (see `timed_request` for a request's shape). `number`
        counts each page's requests from 0."""
        signed_in = self.sign_in(port=port)
        leaving = self.sign_in(port=port)
        ended = dict(leaving.cookies)  # a customer back after signing out: one session look-up
        assert leaving.submit(leaving.get("/portal/dashboard"), "/logout").status == 200
        anonymous = self.browser(port)
        signin_fields = dict(anonymous.get("/portal/").form("/auth/request").fields)
        reply_page = signed_in.get(f"/portal/tickets/{reply_ticket}")
        reply_fields = dict(reply_page.form(f"/tickets/{reply_ticket}/reply").fields)
        reply_path = f"/portal/tickets/{reply_ticket}/reply"

        def page(path, cookies):
            return lambda number: (cookies, "GET", path, None, {}, 200)

        def reply(number):
            # A fresh form id each time: a reply, not a double submit of the last one.
            body, content_type = encode_multipart(
                {**reply_fields, "form_id": secrets.token_urlsafe(16), "message": f"Side by side {number}"},
                [("files", "", b"")])
            return signed_in.cookies, "POST", reply_path, body, {"Content-Type": content_type}, 303

        def signin_request(number):
            # A known address (the link is mailed), each from its own client address:
            # every request passes both rate limits and stores a link.
            body = urllib.parse.urlencode({**signin_fields, "email": f"side{number}@example.com"})
            return anonymous.cookies, "POST", "/portal/auth/request", body.encode(), {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Forwarded-For": f"192.168.{number >> 8 & 255}.{number & 255}"}, 200

        return {
            "sign-in page GET / (cookie of an ended session)": page("/portal/", ended),
            "dashboard": page("/portal/dashboard", signed_in.cookies),
            "ticket page": page(f"/portal/tickets/{self.ticket}", signed_in.cookies),
            "reply POST": reply,
            "sign-in request POST /auth/request (mails a link)": signin_request,
        }

    def backends_side_by_side(self, requests, concurrency):
        """The same pages on two fresh portals, memory and Redis, the upstream instant.

        One after another, the two take turns request by request (memory first, then
        Redis first, ...); at `concurrency`, in BACKEND_BATCHES alternating batches.
        Returns ({page: {backend: {mode: ms}}} with the modes "sequential" and
        "concurrent", each also "... inside" (the portal's own logged time); {page:
        (Redis round trips, {command: calls}) per request}; why Redis was skipped, or "").
        """
        per_client = requests_per_client(requests, concurrency)
        # One known address per sign-in request and backend (their stores are apart).
        contacts = BACKEND_WARM_UP + requests + BACKEND_BATCHES * per_client * concurrency + ROUND_TRIP_SAMPLE
        for n in range(contacts):
            self.fake.add_contact(f"Side Customer {n}", f"side{n}@example.com")
        # Replies go to a ticket of their own: the ticket page measured stays the same length.
        reply_ticket = self.fake.add_conversation(self.contact, self.inbox, "Side by side", "open")
        skipped, server, traffic = redis_unavailable(), None, None
        portals = {"memory": PortalProcess(self.env)}
        try:
            if not skipped:
                try:
                    server = RedisServer().start()
                except (OSError, RuntimeError) as error:
                    skipped, server = f"redis-server did not start ({error})", None
            if server:
                portals["Redis"] = PortalProcess(dict(self.env, STATE_URL=server.url, STATE_PREFIX=BACKEND_PREFIX))
            for backend, portal in list(portals.items()):
                try:
                    portal.wait_until_listening()
                except PortalDidNotStart as error:
                    if backend == "memory":
                        raise SystemExit(f"{error}; run `python portal.py` to see why") from None
                    skipped = f"the portal with STATE_URL did not start: {error}"
                    portals.pop(backend).close()
            if "Redis" in portals:
                traffic = RedisTraffic(server.url)
            makers = {backend: self.backend_pages(portal.port, reply_ticket) for backend, portal in portals.items()}
            results, trips = {}, {}
            for name in makers["memory"]:
                counters = {backend: itertools.count() for backend in portals}

                def batch(backend, count, clients):
                    make = makers[backend][name]
                    return timed_batch(portals[backend].port, [make(next(counters[backend])) for _ in range(count)],
                                       clients)

                def turns(number):
                    return list(portals) if number % 2 == 0 else list(reversed(portals))

                times = {backend: collections.defaultdict(list) for backend in portals}
                for backend in portals:
                    batch(backend, BACKEND_WARM_UP, 1)
                    portals[backend].request_times()  # the warm-up's lines
                for number in range(requests):
                    for backend in turns(number):
                        times[backend]["sequential"] += batch(backend, 1, 1)
                for backend in portals:
                    times[backend]["sequential inside"] = portals[backend].request_times()
                for number in range(BACKEND_BATCHES):
                    for backend in turns(number):
                        times[backend]["concurrent"] += batch(backend, per_client * concurrency, concurrency)
                        times[backend]["concurrent inside"] += portals[backend].request_times()
                results[name] = times
                if traffic:
                    round_trips, commands = traffic.during(lambda: batch("Redis", ROUND_TRIP_SAMPLE, 1))
                    trips[name] = (round_trips / ROUND_TRIP_SAMPLE,
                                   {command: n / ROUND_TRIP_SAMPLE for command, n in commands.items()})
        finally:
            if traffic:
                traffic.close()
            for portal in portals.values():
                portal.close()
            if server:
                server.stop()
                shutil.rmtree(server.folder, ignore_errors=True)
        return results, trips, skipped

    def flood(self, count, concurrency, offset=0):
        """Distinct unknown addresses from distinct (forwarded) client addresses.

        Through the trusted-proxy header every request looks like a new client, so
        no per-IP limit cuts the flood short: every request reaches the limiters,
        Chatwoot and the timing padding, the worst case for memory.
        """
        browser = self.browser()
        page = browser.get("/portal/")
        fields = dict(page.form("/auth/request").fields)
        cookies = dict(browser.cookies)
        before = rss_kib(self.process.pid)
        statuses, lock = {}, threading.Lock()
        per_worker = count // concurrency

        def worker(index):
            local = {}
            connection = None
            for n in range(per_worker):
                number = offset + index * per_worker + n
                body = urllib.parse.urlencode({**fields, "email": f"flood{number}@unknown.example"})
                headers = {"Content-Type": "application/x-www-form-urlencoded",
                           "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items()),
                           "X-Forwarded-For": f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"}
                connection = connection or http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                connection.request("POST", "/portal/auth/request", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                local[response.status] = local.get(response.status, 0) + 1
            with lock:
                for status, seen in local.items():
                    statuses[status] = statuses.get(status, 0) + seen

        elapsed = run_together([lambda i=i: worker(i) for i in range(concurrency)])
        return before, rss_kib(self.process.pid), statuses, elapsed


# ---------------------------------------------------------------------------
# The state backends side by side: memory and Redis, the same pages, one run.
# ---------------------------------------------------------------------------

# Turns alternate memory, Redis, Redis, memory, ...: whatever drifts during the run
# (the machine's other work, the fake Chatwoot's growing data) weighs on both alike.
BACKEND_BATCHES = 8
BACKEND_WARM_UP = 10  # requests per page and portal before any is timed
ROUND_TRIP_SAMPLE = 20  # requests per page on Redis alone, untimed, to count its round trips
BACKEND_PREFIX = "bench:"


def redis_unavailable():
    """Why the Redis column cannot run here, or "" when it can."""
    if not shutil.which("redis-server", path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin:/usr/sbin"):
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    if importlib.util.find_spec("redis") is None:
        return "redis-py is not installed in this Python (pip install -r requirements.txt)"
    return ""


class RedisTraffic:
    """What Redis served between two looks at its INFO.

    Round trips are read events on its client sockets (`total_reads_processed`): a
    pipeline or a script sent at once is one. Commands are `calls` in commandstats,
    where a script's own calls count too. The look itself is one round trip and
    one INFO, measured once and taken off.
    """

    def __init__(self, url):
        import redis
        self._client = redis.Redis.from_url(url, decode_responses=True)
        first, second = self._look(), self._look()
        self._own_reads = second[0] - first[0]

    def _look(self):
        info = self._client.execute_command("INFO", "stats", "commandstats")
        calls = {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in info.items()
                 if name.startswith("cmdstat_") and name != "cmdstat_info"}
        return info["total_reads_processed"], calls

    def during(self, work):
        """(round trips, Counter of commands) Redis served while `work()` ran."""
        reads, calls = self._look()
        work()
        reads_after, calls_after = self._look()
        commands = collections.Counter({name: n - calls.get(name, 0) for name, n in calls_after.items()})
        return reads_after - reads - self._own_reads, +commands

    def close(self):
        self._client.close()


def timed_request(port, request):
    """ms of one request; `request` is (cookies, method, path, body, headers, expected status).

    A fresh client per request with the cookies given, so a cookie the portal
    clears (an ended session's) is sent again next time, as by many tabs."""
    cookies, method, path, body, headers, expected = request
    browser = Browser("127.0.0.1", port)
    browser.cookies = dict(cookies)
    started = time.perf_counter()
    page = browser.request(method, path, body, headers, follow=False)
    elapsed = (time.perf_counter() - started) * 1000
    assert page.status == expected, (method, path, page.status, expected)
    return elapsed


def timed_batch(port, requests, concurrency):
    """ms of each request, sent one after another or by `concurrency` clients at once."""
    if concurrency == 1:
        return [timed_request(port, request) for request in requests]
    times, lock = [], threading.Lock()

    def client(mine):
        measured = [timed_request(port, request) for request in mine]
        with lock:
            times.extend(measured)

    run_together([lambda mine=requests[n::concurrency]: client(mine) for n in range(concurrency)])
    return times


def requests_per_client(requests, concurrency):
    """Each client's share of one batch at concurrency: at most `requests` in all, at least one each."""
    return max(1, requests // (BACKEND_BATCHES * concurrency))


def format_median(times):
    return f"{statistics.median(times):.1f}" if times else "skipped"


def format_ms(times):
    return f"{statistics.median(times):.1f} / {percentile(times, 0.99):.1f}" if times else "skipped"


def format_difference(memory, redis):
    return f"{statistics.median(redis) - statistics.median(memory):+.2f}" if memory and redis else "skipped"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=20.0, help="fake Chatwoot delay per call (default 20)")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency measurement (default 200)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--flood", type=int, default=20_000, help="sign-in requests in the memory flood (default 20000)")
    parser.add_argument("--webhooks", type=int, default=500, help="agent replies in the webhook burst, each delivered twice (default 500)")
    args = parser.parse_args()
    bench = Bench(args)
    delay = args.delay_ms / 1000
    try:
        bench.fake.delay = delay
        counts = bench.calls_per_action()
        browser = bench.sign_in()
        dashboard, ticket = "/portal/dashboard", f"/portal/tickets/{bench.ticket}"
        bench.sequential(browser, dashboard, 20)  # warm up connections and caches
        rows = []
        for name, path in (("dashboard", dashboard), ("ticket page", ticket)):
            seq = bench.sequential(browser, path, args.requests)
            conc, rps = bench.concurrent(browser.cookies, path, args.requests * 2, args.concurrency)
            rows.append((name, seq, conc, rps))
        bench.fake.delay = 0
        instant = {name: statistics.median(bench.sequential(browser, path, args.requests))
                   for name, path in (("dashboard", dashboard), ("ticket page", ticket))}
        long_page = statistics.median(bench.sequential(browser, f"/portal/tickets/{bench.long_ticket}", 30))
        logged = bench.logged_page_times(30)
        long_inside = statistics.median(total for total, _ in logged)
        long_own = statistics.median(total - upstream for total, upstream in logged)
        bench.fake.delay = delay
        busy = bench.sign_in("busy@example.com")
        big_pages = []
        for name, path in (("first page (open)", "/portal/dashboard"),
                           ("page 14 of all", "/portal/dashboard?status=all&page=14"),
                           ("subject search", "/portal/dashboard?status=all&q=order+4")):
            bench.fake.reset_calls()
            busy.get(path)
            calls = len(bench.fake.calls)
            big_pages.append((name, calls, statistics.median(bench.sequential(busy, path, 50))))
        bench.fake.delay = 0
        peak_before_flood = rss_kib(bench.process.pid, "VmHWM")
        flood_before, flood_after, statuses, flood_seconds = bench.flood(args.flood, args.concurrency)
        _, flood_again, _, _ = bench.flood(args.flood, args.concurrency, offset=args.flood)
        peak = rss_kib(bench.process.pid, "VmHWM")
        transfers = bench.transfer_memory(browser)
        burst = bench.webhook_burst(args.webhooks, args.concurrency)
        bench.fake.delay = 0
        backends, redis_traffic, redis_skipped = bench.backends_side_by_side(args.requests, args.concurrency)
    finally:
        bench.close()

    print(f"\nChatwoot calls per action (fake Chatwoot, {args.delay_ms:g} ms per call)")
    print("| action | calls |\n| --- | --- |")
    for name, calls in counts.items():
        print(f"| {name} | {calls} |")
    print(f"\nLatency in ms ({args.requests} sequential requests; {args.requests * 2} at concurrency {args.concurrency})")
    print("| page | p50 | p95 | p50 at c16 | p95 at c16 | req/s at c16 | overhead p50 | overhead, instant upstream |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, seq, conc, rps in rows:
        p50 = statistics.median(seq)
        print(f"| {name} | {p50:.1f} | {percentile(seq, 0.95):.1f} | {statistics.median(conc):.1f} | "
              f"{percentile(conc, 0.95):.1f} | {rps:.0f} | {p50 - args.delay_ms:.1f} | {instant[name]:.1f} |")
    at_once = BACKEND_BATCHES * requests_per_client(args.requests, args.concurrency) * args.concurrency
    print(f"\nState backends side by side, ms (fake Chatwoot instant; per page and backend {args.requests} requests "
          f"one after another, the backends taking turns, and {at_once} at concurrency {args.concurrency} in "
          f"{BACKEND_BATCHES} batches alternating between them; two fresh portals, the same but for STATE_URL)")
    if redis_skipped:
        print(f"Redis column skipped: {redis_skipped}")
    print("| page | memory p50 / p99 | Redis p50 / p99 | Redis minus memory, p50 "
          "| inside the portal, p50: memory / Redis | Redis round trips |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, suffix in (("sequential", ""), ("concurrent", f", at c{args.concurrency}")):
        for name, times in backends.items():
            memory, on_redis = times["memory"], times.get("Redis", {})
            inside = " / ".join(format_median(t.get(mode + " inside")) for t in (memory, on_redis))
            trips = f"{redis_traffic[name][0]:.1f}" if name in redis_traffic else "skipped"
            print(f"| {name}{suffix} | {format_ms(memory[mode])} | {format_ms(on_redis.get(mode))} | "
                  f"{format_difference(memory[mode], on_redis.get(mode))} | {inside} | {trips} |")
    if redis_traffic:
        print("\nRedis commands per request (INFO commandstats; a script's own calls count too, "
              "a round trip may carry several)")
        print("| page | commands | of which |\n| --- | --- | --- |")
        for name, (_, commands) in redis_traffic.items():
            listed = ", ".join(f"{command} {n:.1f}" for command, n in sorted(commands.items(), key=lambda c: -c[1]))
            print(f"| {name} | {sum(commands.values()):.1f} | {listed or 'none'} |")
    print(f"\nDashboard of a contact with 500 tickets (fake Chatwoot, {args.delay_ms:g} ms per call)")
    print("| page | Chatwoot calls | p50 ms |\n| --- | --- | --- |")
    for name, calls, p50 in big_pages:
        print(f"| {name} | {calls} | {p50:.1f} |")
    print(f"\nA 500-message ticket page with an instant upstream: {long_page:.1f} ms p50 at the client, "
          f"{long_inside:.1f} ms inside the portal, of which {long_own:.1f} ms is the portal's own work "
          "after the calls (filtering, Markdown, rendering); the rest is the two calls, JSON decoding included")
    print("\nMemory of the portal process")
    print("| measure | MiB |\n| --- | --- |")
    print(f"| peak RSS before the flood | {peak_before_flood / 1024:.1f} |")
    print(f"| RSS before / after {args.flood} / after {2 * args.flood} sign-in requests for unknown addresses | "
          f"{flood_before / 1024:.1f} / {flood_after / 1024:.1f} / {flood_again / 1024:.1f} |")
    print(f"| peak RSS overall | {peak / 1024:.1f} |")
    answered = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(f"\nFlood answered: {answered} in {flood_seconds:.1f} s")
    print("\nFiles: 4 clients at once, 10 MB each (RSS of the portal process, MiB)")
    print("| transfer | RSS before | peak RSS during | growth | seconds |\n| --- | --- | --- | --- | --- |")
    for phase, (before, peak_during, seconds) in transfers.items():
        print(f"| {phase} | {before / 1024:.1f} | {peak_during / 1024:.1f} | {(peak_during - before) / 1024:.1f} | {seconds:.1f} |")
    times, statuses, elapsed, mailed, twice, last_mail = burst
    answered = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
    print(f"\nWebhook burst: {len(times)} signed deliveries ({args.webhooks} agent replies, each twice, shuffled) "
          f"at concurrency {args.concurrency}")
    print("| measure | value |\n| --- | --- |")
    print(f"| answered | {answered} |")
    print(f"| answered per second | {len(times) / elapsed:.0f} |")
    print(f"| answer time p50 / p99 / max, ms | {statistics.median(times):.1f} / {percentile(times, 0.99):.1f} / {max(times):.1f} |")
    print(f"| reply mails arrived (distinct) | {mailed} of {args.webhooks}, the last {last_mail:.1f} s after the burst began |")
    print(f"| mails sent twice | {twice} |")


if __name__ == "__main__":
    main()
