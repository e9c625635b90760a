"""Soak test: many mixed requests from a second process, then leaks and losses.

    python bench/soak.py [--requests 30000] [--concurrency 32] [--time-limit 180]
                         [--portal-env NAME=VALUE ...]

Starts the fake Chatwoot (no delay) and an SMTP catcher in this process, the
portal as a separate process (with the `Environment=` settings of portal.service,
as production runs it; WEBHOOK_SECRET set, NOTIFY_DELAY_SECONDS=0), and
the load generator as a third process (multiprocessing, spawn). The generator's
workers each play one customer: they sign in (request a link, read it from the
SMTP catcher, open it, confirm), sign out, look at the dashboard and ticket pages, open
tickets, reply, cancel, download a file, and post Chatwoot's signed webhooks
for agent replies (each delivered twice, as Chatwoot does).

A short warm-up at full concurrency comes first; then RSS, open files and
threads of the portal are taken as the baseline, the soak runs, and after a
short settle they are taken again. The RSS is also sampled as each tenth of
either phase's requests begins and printed as a curve: a cache filling to its
cap levels off, a leak keeps climbing, and so does state kept for a time longer
than the soak: a customer signing in again signs out first 3 times in 4, the
4th leaves its session to expire after SESSION_IDLE_MINUTES, and each used
sign-in link leaves a record for a day.
Last, a reconciliation: every ticket and reply the soak made exists in the fake
Chatwoot exactly once, and every reply mail and sign-in mail arrived exactly once.

Everything is on 127.0.0.1, every loop is bounded by a count and a deadline,
and the generator is killed when it overruns the time limit. Exits 1 when a
goal is missed: any 5xx or unexpected answer, RSS growth of 10 % or more, open
files or threads not back to the baseline, an item or mail missing or doubled.
"""

import argparse
import collections
import email
import email.policy
import hashlib
import hmac
import http.client
import multiprocessing
import os
import queue
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT), str(ROOT / "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from browser import encode_multipart  # noqa: E402
from chatwoot_client import EXECUTOR_THREADS, POOL_SIZE  # noqa: E402

WEBHOOK_SECRET = "soak-webhook-secret-0123456789"
SIGNIN_SUBJECT = "Your sign-in link"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 80 + b"\n%%EOF\n"  # ~20 KB
# Share of the generator's choices; a sign-in is 5 requests, a create 2, the rest 1.
MIX = (("dashboard", 24), ("ticket", 24), ("download", 10), ("reply", 11), ("create", 6),
       ("cancel", 3), ("webhook", 14), ("signin", 3))
# The portal's RSS is sampled this many times during the soak (each tenth of its
# requests), so a reader sees whether it levels off or keeps climbing.
CURVE_POINTS = 10


# ---------------------------------------------------------------------------
# The load generator (runs in its own process)
# ---------------------------------------------------------------------------


class Client:
    """One customer's browser: a keep-alive connection, cookies, timings."""

    def __init__(self, port, forwarded_for, record):
        self.port, self.forwarded_for, self.record = port, forwarded_for, record
        self.cookies, self.connection, self.csrf = {}, None, ""

    def close(self):
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def request(self, route, method, path, body=None, headers=None):
        """(status, headers dict, body bytes); status 0 when the connection failed."""
        headers = dict(headers or {})
        headers["X-Forwarded-For"] = self.forwarded_for
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started = time.perf_counter()
        for attempt in (1, 2):
            fresh = self.connection is None
            if fresh:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                data = response.read()
                status, answer = response.status, response.getheaders()
                if response.will_close:
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as error:
                # An idle keep-alive connection the server closed: once more on a new one,
                # but never a POST that a fresh connection already carried.
                self.close()
                if fresh or attempt == 2:
                    self.record(route, 0, (time.perf_counter() - started) * 1000, f"{type(error).__name__}")
                    return 0, {}, b""
            except OSError as error:
                self.close()
                self.record(route, 0, (time.perf_counter() - started) * 1000, f"{type(error).__name__}")
                return 0, {}, b""
        self.record(route, status, (time.perf_counter() - started) * 1000, None)
        for name, value in answer:
            if name.lower() == "set-cookie":
                pair = value.split(";", 1)[0]
                key, _, val = pair.partition("=")
                if "max-age=0" in value.lower() or not val:
                    self.cookies.pop(key.strip(), None)
                else:
                    self.cookies[key.strip()] = val.strip()
        found = re.search(rb'name="csrf_token" value="([^"]+)"', data)
        if found:
            self.csrf = found.group(1).decode()
        return status, {k.lower(): v for k, v in answer}, data

    def post_form(self, route, path, fields):
        body = urllib.parse.urlencode({"csrf_token": self.csrf, **fields}).encode()
        return self.request(route, "POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, route, path, fields):
        body, content_type = encode_multipart({"csrf_token": self.csrf, **fields}, [("files", "", b"")])
        return self.request(route, "POST", path, body, {"Content-Type": content_type})


def _generator_main(options, links, results, progress):
    """Entry point of the generator process: run the workers, send back what happened."""
    try:
        results.put(("ok", _generate(options, links, progress)))
    except BaseException as error:  # noqa: BLE001 - the parent must hear about it
        results.put(("error", repr(error)))


def _generate(options, links, progress):
    """Run the workers; `progress` hears the count of requests begun at each tenth of the budget."""
    port, concurrency, budget = options["port"], options["concurrency"], options["requests"]
    deadline = time.monotonic() + options["seconds"]
    lock = threading.Lock()
    remaining = [budget]
    marks = [budget * tenth // CURVE_POINTS for tenth in range(CURVE_POINTS, 0, -1)]  # next mark last
    timings = collections.defaultdict(list)
    statuses = collections.Counter()
    unexpected = []
    created, replies, cancelled, signins, delivered = [], [], [], collections.Counter(), set()
    webhooks = list(options["webhooks"])
    mailboxes = {worker["email"]: queue.Queue() for worker in options["workers"]}
    stop = threading.Event()

    def dispatch_links():
        while not stop.is_set():
            try:
                address, link = links.get(timeout=0.2)
            except queue.Empty:
                continue
            if address in mailboxes:
                mailboxes[address].put(link)

    def take(count):
        with lock:
            if remaining[0] < count or time.monotonic() > deadline:
                return False
            remaining[0] -= count
            while marks and budget - remaining[0] >= marks[-1]:
                progress.put(marks.pop())
            return True

    def record(route, status, ms, error):
        with lock:
            timings[route].append(ms)
            statuses[status] += 1
            if error:
                unexpected.append(f"{route}: {error}")

    def expect(route, status, wanted, data=b""):
        if status not in wanted:
            with lock:
                snippet = re.sub(rb"\s+", b" ", data[:200]).decode("utf-8", "replace")
                unexpected.append(f"{route}: {status} (wanted {'/'.join(map(str, wanted))}) {snippet}")
            return False
        return True

    def worker(index, me):
        rng = random.Random(options["seed"] * 1000 + index)
        client = Client(port, f"10.77.{index // 200}.{index % 200 + 1}", record)
        tickets = list(me["tickets"])
        mine = []  # tickets this worker opened and has not cancelled
        count = 0
        names, weights = zip(*MIX)

        def sign_in(again=False):  # 5 requests: the form, the link asked for, opened, confirmed, the dashboard
            # A customer signing in again mostly signed out before (3 in 4, a 6th
            # request); the others left their session to run out (SESSION_IDLE_MINUTES)
            # and come back from another browser.
            sign_out = again and rng.random() < 0.75
            if not take(6 if sign_out else 5):
                return False
            if sign_out:
                status, _, data = client.post_form("POST /logout", "/portal/logout", {})
                if not expect("POST /logout", status, (303,), data):
                    return False
            client.close()
            client.cookies.clear()
            status, _, data = client.request("GET /", "GET", "/portal/")
            if not expect("GET /", status, (200,), data):
                return False
            status, _, data = client.post_form("POST /auth/request", "/portal/auth/request", {"email": me["email"]})
            if not expect("POST /auth/request", status, (200,), data):
                return False
            with lock:
                signins[me["email"]] += 1
            try:
                link = mailboxes[me["email"]].get(timeout=15)
            except queue.Empty:
                with lock:
                    unexpected.append(f"sign-in: no link mailed to {me['email']} within 15 s")
                return False
            path = urllib.parse.urlsplit(link)
            status, _, data = client.request("GET /auth/verify", "GET", f"/portal/auth/verify?{path.query}")
            if not expect("GET /auth/verify", status, (200,), data):
                return False
            token = urllib.parse.parse_qs(path.query)["token"][0]
            status, headers, data = client.post_form("POST /auth/verify", "/portal/auth/verify", {"token": token})
            if not expect("POST /auth/verify", status, (303,), data):
                return False
            # As a browser follows the redirect: the page brings the session's form token.
            status, _, data = client.request("GET /dashboard", "GET", "/portal/dashboard")
            return expect("GET /dashboard", status, (200,), data)

        if not sign_in():
            return
        while not stop.is_set():
            action = rng.choices(names, weights)[0]
            if action == "signin":
                if not sign_in(again=True):
                    break
                continue
            if action == "create":
                if not take(2):
                    break
                status, _, data = client.request("GET /tickets/new", "GET", "/portal/tickets/new")
                if not expect("GET /tickets/new", status, (200,), data):
                    continue
                count += 1
                tag = f"soak-{options['run']}-w{index}-t{count}"
                status, headers, data = client.post_multipart("POST /tickets", "/portal/tickets", {
                    "form_id": tag, "subject": f"Soak ticket {tag}", "priority": rng.choice(["none", "low", "high"]),
                    "message": f"Opened by the soak: {tag}"})
                if expect("POST /tickets", status, (303,), data):
                    found = re.search(r"/tickets/(\d+)", headers.get("location", ""))
                    ticket_id = int(found.group(1)) if found else 0
                    mine.append(ticket_id)
                    tickets.append(ticket_id)
                    with lock:
                        created.append((tag, ticket_id))
                continue
            if not take(1):
                break
            if action == "dashboard":
                query = rng.choice(["", "", "?status=all", "?status=resolved", "?status=all&q=soak"])
                status, _, data = client.request("GET /dashboard", "GET", "/portal/dashboard" + query)
                expect("GET /dashboard", status, (200,), data)
            elif action == "ticket":
                ticket_id = rng.choice(tickets)
                status, _, data = client.request("GET /tickets/:id", "GET", f"/portal/tickets/{ticket_id}")
                expect("GET /tickets/:id", status, (200,), data)
            elif action == "download":
                ticket_id, attachment_id = me["file"]
                status, _, data = client.request("GET /tickets/:id/attachments/:id", "GET",
                                                 f"/portal/tickets/{ticket_id}/attachments/{attachment_id}/report.pdf")
                if expect("GET /tickets/:id/attachments/:id", status, (200,), data) and data != PDF:
                    with lock:
                        unexpected.append(f"download: {len(data)} bytes, not the {len(PDF)} of the file")
            elif action == "reply":
                ticket_id = rng.choice(tickets)
                count += 1
                tag = f"soak-{options['run']}-w{index}-r{count}"
                status, _, data = client.post_multipart("POST /tickets/:id/reply", f"/portal/tickets/{ticket_id}/reply",
                                                        {"form_id": tag, "message": f"Soak reply {tag}"})
                if expect("POST /tickets/:id/reply", status, (303,), data):
                    with lock:
                        replies.append((tag, ticket_id))
            elif action == "cancel":
                if not mine:
                    status, _, data = client.request("GET /dashboard", "GET", "/portal/dashboard?status=all")
                    expect("GET /dashboard", status, (200,), data)
                    continue
                ticket_id = mine.pop(rng.randrange(len(mine)))
                status, _, data = client.post_form("POST /tickets/:id/cancel", f"/portal/tickets/{ticket_id}/cancel", {})
                if expect("POST /tickets/:id/cancel", status, (303,), data):
                    with lock:
                        cancelled.append(ticket_id)
            elif action == "webhook":
                with lock:
                    key, body = webhooks.pop() if webhooks else (None, None)
                if body is None:  # all delivered: a dashboard instead
                    status, _, data = client.request("GET /dashboard", "GET", "/portal/dashboard")
                    expect("GET /dashboard", status, (200,), data)
                    continue
                timestamp = str(int(time.time()))
                digest = hmac.new(WEBHOOK_SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
                status, _, data = client.request("POST /webhooks/chatwoot", "POST", "/portal/webhooks/chatwoot", body, {
                    "Content-Type": "application/json", "X-Chatwoot-Timestamp": timestamp,
                    "X-Chatwoot-Signature": f"sha256={digest}"})
                if expect("POST /webhooks/chatwoot", status, (200,), data):
                    with lock:
                        delivered.add(key)
        client.close()

    dispatcher = threading.Thread(target=dispatch_links, daemon=True)
    dispatcher.start()
    workers = [threading.Thread(target=worker, args=(n, options["workers"][n]), daemon=True)
               for n in range(concurrency)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(max(0.0, deadline - time.monotonic()) + 35)  # a request's timeout past the deadline
    elapsed = time.perf_counter() - started
    stop.set()
    dispatcher.join(1)
    with lock:
        return dict(timings=dict(timings), statuses=dict(statuses), unexpected=list(unexpected),
                    created=list(created), replies=list(replies), cancelled=list(cancelled),
                    signins=dict(signins), delivered=sorted(delivered), webhooks_left=len(webhooks), elapsed=elapsed,
                    timed_out=time.monotonic() > deadline, stuck=sum(t.is_alive() for t in workers))


# ---------------------------------------------------------------------------
# The portal, the fake Chatwoot and the SMTP catcher (this process)
# ---------------------------------------------------------------------------


class Mailbox:
    """Every mail kept as (to, subject, text); sign-in links also go to the generator."""

    def __init__(self):
        self.mails, self.links = [], None
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = message.get_body(("plain",)).get_content()
        with self.lock:
            self.mails.append((str(message["To"]), str(message["Subject"]), text))
        if self.links is not None and message["Subject"] == SIGNIN_SUBJECT:
            found = re.search(r"http://\S+/auth/verify\?token=[\w-]+", text)
            if found:
                self.links.put((str(message["To"]), found.group(0)))
        return "250 OK"

    def snapshot(self):
        with self.lock:
            return list(self.mails)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def proc_status(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def fd_kinds(pid):
    kinds = collections.Counter()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        kinds[target.split(":", 1)[0] if ":" in target else "file"] += 1
    return dict(kinds)


def resources(pid):
    # RssAnon is the heap (Python's and malloc's) and thread stacks; RssFile is code
    # and libraries mapped from disk, which settles once every route has run.
    return dict(rss=proc_status(pid, "VmRSS"), rss_anon=proc_status(pid, "RssAnon"),
                rss_file=proc_status(pid, "RssFile"), fds=open_fds(pid), threads=proc_status(pid, "Threads"),
                kinds=fd_kinds(pid))


def settle(pid, baseline, seconds, fd_margin=0, thread_margin=0):
    """Resources once fds and threads are back at the baseline, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        now = resources(pid)
        if (now["fds"] <= baseline["fds"] + fd_margin and now["threads"] <= baseline["threads"] + thread_margin) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


def unit_environment(unit=ROOT / "portal.service"):
    """The `Environment=` settings of the systemd unit, so the soak runs the portal as
    production does (allocator settings included); the caller overrides STATE_DIR."""
    settings = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line[len("Environment="):]):
                name, sep, value = assignment.partition("=")
                if sep:
                    settings[name] = value
    return settings


def run_soak(requests=30_000, concurrency=32, seconds=180.0, warmup=None, seed=1, log=print,
             fd_margin=0, thread_margin=0, portal_env=None):
    """Run the whole soak; returns a dict of figures and a list of missed goals (`failures`).

    The portal gets the unit's `Environment=` settings (unit_environment), then
    `portal_env`: more for this run, e.g. {"MALLOC_ARENA_MAX": "2"}."""
    from aiosmtpd.controller import Controller
    from fake_chatwoot import FakeChatwoot

    hard_stop = time.monotonic() + seconds + 120  # setup, warm-up, settle and reconciliation included
    run = f"{os.getpid()}x{int(time.time())}"
    warmup = warmup if warmup is not None else max(1000, requests // 10)
    fake = FakeChatwoot(token="soak-token").start()
    mailbox = Mailbox()
    smtp = portal = None
    state_dir = tempfile.mkdtemp(prefix="portal-soak-")
    context = multiprocessing.get_context("spawn")
    try:
        inbox = fake.add_inbox("Customer Portal", "Channel::Api")
        workers = []
        for n in range(concurrency):
            address = f"soak{n}@example.com"
            contact = fake.add_contact(f"Soak Customer {n}", address)
            tickets = []
            for t in range(4):
                ticket = fake.add_conversation(contact, inbox, f"Seeded {n}-{t}", "open" if t % 2 == 0 else "resolved")
                for m in range(5):
                    fake.add_message(ticket, f"Seeded message {m} of {n}-{t}", "incoming" if m % 2 == 0 else "outgoing")
                tickets.append(ticket)
            message = fake.add_message(tickets[0], "The report you asked for.", "outgoing", attachments=[
                {"filename": "report.pdf", "content_type": "application/pdf", "data": PDF}])
            attachment_id = next(a["id"] for m in fake.messages_of(tickets[0]) if m["id"] == message
                                 for a in m["attachments"])
            workers.append(dict(email=address, tickets=tickets, file=(tickets[0], attachment_id)))
        # Agent replies for the webhooks, each on its own ticket of a customer who
        # never looks at them in the portal: each must be mailed exactly once.
        notified = fake.add_contact("Notified Customer", "notified@example.com")

        def agent_replies(count, phase):
            bodies, expected = [], {}
            for n in range(count):
                title = f"Soak notify {run} {phase}{n}"
                ticket = fake.add_conversation(notified, inbox, title, "open")
                message = fake.add_message(ticket, f"Agent answer {run} {phase}{n}", "outgoing")
                expected[f"New reply: {title} (ticket #{ticket})"] = f"Agent answer {run} {phase}{n}"
                bodies += [(f"New reply: {title} (ticket #{ticket})", fake.webhook_body(message))] * 2  # Chatwoot's duplicates
            random.Random(seed).shuffle(bodies)
            return bodies, expected

        share = dict(MIX)["webhook"] / sum(dict(MIX).values())
        warm_bodies, warm_expected = agent_replies(max(1, int(warmup * share / 2)), "w")
        main_bodies, main_expected = agent_replies(max(1, int(requests * share / 2)), "m")

        smtp_port = free_port()
        smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
        smtp.start()
        port = free_port()
        portal_log = tempfile.TemporaryFile(mode="w+")
        unit_env = unit_environment()
        env = dict(os.environ, **unit_env)
        env.update(HOST="127.0.0.1", PORT=str(port), BASE_PATH="/portal",
                   PORTAL_URL=f"http://127.0.0.1:{port}", CHATWOOT_URL=fake.url,
                   CHATWOOT_API_TOKEN=fake.token, CHATWOOT_ACCOUNT_ID=str(fake.account_id),
                   CHATWOOT_INBOX_ID=str(inbox), SESSION_SECRET="soak-" + "x" * 40,
                   SMTP_ADDRESS="127.0.0.1", SMTP_PORT=str(smtp_port), SMTP_SECURITY="none",
                   SMTP_FROM="support@example.com", PYTHONUNBUFFERED="1", TRUSTED_PROXY="127.0.0.1",
                   WEBHOOK_SECRET=WEBHOOK_SECRET, NOTIFY_DELAY_SECONDS="0",
                   STATE_DIR=state_dir)
        env.update(portal_env or {})
        portal = subprocess.Popen([sys.executable, str(ROOT / "portal.py")], cwd=ROOT, env=env,
                                  stdout=portal_log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if portal.poll() is not None:
                portal_log.seek(0)
                raise RuntimeError("the portal exited at start:\n" + portal_log.read()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the portal did not listen within 30 s") from None
                time.sleep(0.05)

        links = context.Queue()
        mailbox.links = links
        started_at = resources(portal.pid)

        def generate(count, bodies, phase_seconds, phase_seed):
            """Run one phase; its result has `curve`: [(requests begun, RSS KiB)] at each tenth."""
            results, progress, curve = context.Queue(), context.Queue(), []
            options = dict(port=port, concurrency=concurrency, requests=count, seconds=phase_seconds,
                           seed=phase_seed, run=f"{run}-{phase_seed}", workers=workers, webhooks=bodies)

            def sample_rss():
                while (begun := progress.get()) is not None:
                    curve.append((begun, proc_status(portal.pid, "VmRSS")))

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            process = context.Process(target=_generator_main, args=(options, links, results, progress), daemon=True)
            process.start()
            try:
                status, value = results.get(timeout=max(1.0, min(phase_seconds + 60, hard_stop - time.monotonic())))
            except queue.Empty:
                status, value = "error", "the load generator overran its time limit and was killed"
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            progress.put(None)
            sampler.join(5)
            if status != "ok":
                raise RuntimeError(value)
            return dict(value, curve=curve)

        log(f"soak: warm-up, {warmup} requests at concurrency {concurrency}")
        t0 = time.perf_counter()
        warm = generate(warmup, warm_bodies, max(10.0, seconds / 4), seed * 2 + 1)
        warm_seconds = time.perf_counter() - t0
        time.sleep(1.0)  # the warm-up's connections close, its mails go out
        baseline = settle(portal.pid, started_at, 5)
        log(f"soak: {requests} requests at concurrency {concurrency} (limit {seconds:.0f} s)")
        t0 = time.perf_counter()
        main = generate(requests, main_bodies, seconds, seed * 2 + 2)
        main_seconds = time.perf_counter() - t0
        peak = proc_status(portal.pid, "VmHWM")

        # Mails: wait until every expected one is there, then a little longer for doubles.
        # A reply is expected in a mail once one of its two deliveries was answered
        # (the generator's budget may end before a reply's first delivery).
        expected = {subject: text for phase, wanted in ((warm, warm_expected), (main, main_expected))
                    for subject, text in wanted.items() if subject in set(phase["delivered"])}
        wait_until = min(time.monotonic() + 60, hard_stop)
        while time.monotonic() < wait_until:
            subjects = {subject for _, subject, _ in mailbox.snapshot()}
            if all(subject in subjects for subject in expected):
                break
            time.sleep(0.1)
        mail_seconds = time.perf_counter() - t0 - main_seconds
        time.sleep(2)
        end = settle(portal.pid, baseline, 10, fd_margin, thread_margin)
        settle_seconds = time.perf_counter() - t0 - main_seconds - mail_seconds

        # -- reconciliation ----------------------------------------------------
        failures = []
        mails = mailbox.snapshot()
        by_subject = collections.Counter(subject for _, subject, _ in mails)
        texts = collections.defaultdict(list)
        for _, subject, text in mails:
            texts[subject].append(text)
        reply_mails = collections.Counter({s: by_subject[s] for s in expected})
        missing_mails = [s for s in expected if reply_mails[s] == 0]
        doubled_mails = [s for s in expected if reply_mails[s] > 1]
        wrong_text = [s for s in expected if reply_mails[s] and expected[s] not in texts[s][0]]
        stray = [s for s in by_subject if s.startswith("New reply:") and s not in expected]
        signin_mails = collections.Counter(to for to, subject, _ in mails if subject == SIGNIN_SUBJECT)
        asked = collections.Counter(warm["signins"]) + collections.Counter(main["signins"])
        signin_off = {a: (asked[a], signin_mails[a]) for a in set(asked) | set(signin_mails) if asked[a] != signin_mails[a]}

        subjects, contents = collections.Counter(), collections.Counter()
        number = 1
        while True:  # display ids count up from 1
            try:
                conversation = fake.conversation(number)
            except KeyError:
                break
            subject = (conversation.get("additional_attributes") or {}).get("mail_subject") or ""
            if subject.startswith("Soak ticket "):
                subjects[subject] += 1
            for message in fake.messages_of(number):
                content = message.get("content") or ""
                if content.startswith("Soak reply ") or content.startswith("Opened by the soak: "):
                    contents[content] += 1
            number += 1
        made = warm["created"] + main["created"]
        sent = warm["replies"] + main["replies"]
        ticket_off = [tag for tag, _ in made if subjects[f"Soak ticket {tag}"] != 1
                      or contents[f"Opened by the soak: {tag}"] != 1]
        reply_off = [tag for tag, _ in sent if contents[f"Soak reply {tag}"] != 1]
        extra = (sum(subjects.values()) - len(made)) + (sum(contents.values()) - len(made) - len(sent))
        cancelled_open = [t for t in main["cancelled"] if fake.conversation(t)["status"] != "resolved"
                          and not any(ticket == t for _, ticket in main["replies"])]

        timings = main["timings"]
        total = sum(len(v) for v in timings.values())
        five_xx = sum(count for status, count in main["statuses"].items() if status >= 500)
        growth = (end["rss"] - baseline["rss"]) / baseline["rss"] * 100
        figures = dict(
            requests=total, concurrency=concurrency, seconds=main_seconds, warmup_seconds=warm_seconds,
            rps=total / main["elapsed"] if main["elapsed"] else 0.0, statuses=main["statuses"],
            five_xx=five_xx, unexpected=warm["unexpected"] + main["unexpected"],
            routes={route: (len(v), percentile(v, 0.5), percentile(v, 0.99), max(v)) for route, v in timings.items()},
            rss_start=started_at["rss"], rss_warm=baseline["rss"], rss_end=end["rss"], rss_peak=peak,
            rss_growth=growth, rss_curve_warm=warm["curve"], rss_curve=main["curve"],
            unit_env={k: v for k, v in unit_env.items() if k != "STATE_DIR"}, portal_env=dict(portal_env or {}),
            baseline=baseline, end=end, settle_seconds=settle_seconds,
            mail_seconds=mail_seconds, created=len(made), replies=len(sent), cancelled=len(main["cancelled"]),
            webhook_replies=len(expected), reply_mails=sum(reply_mails.values()), signins=sum(asked.values()),
            signin_mails=sum(signin_mails.values()), webhooks_left=main["webhooks_left"])
        if main["timed_out"] or total < requests:
            failures.append(f"only {total} of {requests} requests within {seconds:.0f} s")
        if main["stuck"] or warm["stuck"]:
            failures.append(f"{main['stuck'] + warm['stuck']} generator workers still stuck at the end")
        if five_xx:
            failures.append(f"{five_xx} answers with 5xx")
        if figures["unexpected"]:
            failures.append(f"{len(figures['unexpected'])} unexpected answers, e.g. {figures['unexpected'][:3]}")
        if growth >= 10:
            failures.append(f"RSS grew {growth:.1f} % from the warm-up (goal < 10 %)")
        if end["fds"] > baseline["fds"] + fd_margin:
            failures.append(f"open files {end['fds']} after the settle, baseline {baseline['fds']}")
        if end["threads"] > baseline["threads"] + thread_margin:
            failures.append(f"threads {end['threads']} after the settle, baseline {baseline['threads']}")
        if ticket_off or reply_off or extra:
            failures.append(f"not exactly once in Chatwoot: {len(ticket_off)} tickets, {len(reply_off)} replies, "
                            f"{extra} extra items, e.g. {(ticket_off + reply_off)[:3]}")
        if cancelled_open:
            failures.append(f"{len(cancelled_open)} cancelled tickets not resolved, e.g. {cancelled_open[:3]}")
        if missing_mails or doubled_mails or wrong_text or stray:
            failures.append(f"reply mails: {len(missing_mails)} missing, {len(doubled_mails)} twice, "
                            f"{len(wrong_text)} with the wrong text, {len(stray)} unexpected "
                            f"(e.g. {(missing_mails + doubled_mails + wrong_text + stray)[:2]})")
        if signin_off:
            failures.append(f"sign-in mails not one per request: {dict(list(signin_off.items())[:3])} (asked, mailed)")
        figures["failures"] = failures
        return figures
    finally:
        mailbox.links = None
        if portal is not None:
            portal.terminate()
            try:
                portal.wait(timeout=10)
            except subprocess.TimeoutExpired:
                portal.kill()
                portal.wait(5)
        if smtp is not None:
            smtp.stop()
        fake.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def report(figures, print=print):
    print(f"\nSoak: {figures['requests']} requests at concurrency {figures['concurrency']} in "
          f"{figures['seconds']:.1f} s ({figures['rps']:.0f} req/s; warm-up {figures['warmup_seconds']:.1f} s)")
    settings = [f"{k}={v}" for k, v in figures["unit_env"].items()]
    added = [f"{k}={v}" for k, v in figures["portal_env"].items()]
    print("portal environment as in portal.service: " + (" ".join(settings) or "nothing")
          + (f"; added for this run: {' '.join(added)}" if added else ""))
    answered = ", ".join(f"{count} x {status}" for status, count in sorted(figures["statuses"].items()))
    print(f"answers: {answered}; 5xx: {figures['five_xx']} (goal 0); unexpected: {len(figures['unexpected'])} (goal 0)")
    print("| route | requests | p50 ms | p99 ms | max ms |\n| --- | --- | --- | --- | --- |")
    for route, (count, p50, p99, worst) in sorted(figures["routes"].items()):
        print(f"| {route} | {count} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    base, end = figures["baseline"], figures["end"]
    print("\n| portal process | at start | after warm-up (baseline) | at the end (settled) |\n| --- | --- | --- | --- |")
    print(f"| RSS MiB | {figures['rss_start'] / 1024:.1f} | {figures['rss_warm'] / 1024:.1f} | "
          f"{figures['rss_end'] / 1024:.1f} (growth {figures['rss_growth']:+.1f} %, goal < 10 %; peak {figures['rss_peak'] / 1024:.1f}) |")
    print(f"| of it anonymous / files MiB | | {base['rss_anon'] / 1024:.1f} / {base['rss_file'] / 1024:.1f} | "
          f"{end['rss_anon'] / 1024:.1f} / {end['rss_file'] / 1024:.1f} |")
    print(f"| open fds | | {base['fds']} {base['kinds']} | {end['fds']} {end['kinds']} |")
    print(f"| threads | | {base['threads']} | {end['threads']} |")
    print(f"(mails all in {figures['mail_seconds']:.1f} s after the load; settled within {figures['settle_seconds']:.1f} s)")
    print(rss_curve("RSS MiB during the warm-up", figures["rss_curve_warm"]))
    print(rss_curve("RSS MiB during the soak", figures["rss_curve"], figures["rss_warm"]))
    print(f"\nReconciliation: {figures['created']} tickets opened, {figures['replies']} replies, "
          f"{figures['cancelled']} cancels; {figures['webhook_replies']} agent replies by webhook (each delivered twice) -> "
          f"{figures['reply_mails']} reply mails; {figures['signins']} sign-in requests -> {figures['signin_mails']} sign-in mails")
    if figures["failures"]:
        print("\nGOALS MISSED:")
        for failure in figures["failures"]:
            print(f"- {failure}")
    else:
        print("\nAll goals met.")


def rss_curve(title, curve, baseline=None):
    """One line: the RSS as each tenth of a phase's requests began (growth from `baseline`)."""
    points = []
    for begun, rss in curve:
        growth = f" {(rss - baseline) / baseline * 100:+.1f} %" if baseline else ""
        points.append(f"{begun}: {rss / 1024:.1f}{growth}")
    return f"{title}, after n requests began: " + ("; ".join(points) or "(no samples)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--time-limit", type=float, default=180.0, help="seconds the soak itself may take (default 180)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--portal-env", action="append", default=[], metavar="NAME=VALUE",
                        help="also set this in the portal's environment (repeatable), e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args()
    portal_env = {}
    for setting in args.portal_env:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--portal-env wants NAME=VALUE, not {setting!r}")
        portal_env[name] = value
    started = time.perf_counter()
    # Two pools fill lazily up to their bounds as concurrency peaks (the Chatwoot
    # client's keep-alive connections and its executor threads): growth within
    # them is not a leak, one socket or thread per request would pass them at once.
    figures = run_soak(args.requests, args.concurrency, args.time_limit, seed=args.seed, portal_env=portal_env,
                       fd_margin=POOL_SIZE, thread_margin=EXECUTOR_THREADS)
    report(figures)
    print(f"(whole run {time.perf_counter() - started:.1f} s)")
    sys.exit(1 if figures["failures"] else 0)


if __name__ == "__main__":
    main()
