"""Benchmark: Chatwoot calls per action, page latency, throughput, overhead, memory.

    python bench/bench.py [--delay-ms 20] [--requests 200] [--concurrency 16] [--flood 20000] [--webhooks 500]

Starts the fake Chatwoot (in this process) answering every API call after
`--delay-ms`, a real SMTP server, and the portal as a separate process (so its
memory is its own), signs in, and prints a table. "Overhead" is the page's p50
minus the upstream delay it cannot avoid (one delay: a ticket page's two calls run
side by side). Figures vary with the machine; run it twice before comparing.

Last, a burst of Chatwoot webhooks: `--webhooks` agent replies on as many tickets,
each delivered twice in shuffled order and signed as Chatwoot signs them; it
prints how fast the portal answers them and checks that exactly one mail per
reply arrives.
"""

import argparse
import collections
import email
import email.policy
import hashlib
import hmac
import http.client
import os
import random
import re
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

from browser import Browser  # noqa: E402
from fake_chatwoot import FakeChatwoot  # noqa: E402


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
        self.port = free_port()
        # The portal's own log lines time each request inside the portal.
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, HOST="127.0.0.1", PORT=str(self.port), BASE_PATH="/portal",
                   PORTAL_URL=f"http://127.0.0.1:{self.port}", CHATWOOT_URL=self.fake.url,
                   CHATWOOT_API_TOKEN=self.fake.token, CHATWOOT_ACCOUNT_ID=str(self.fake.account_id),
                   CHATWOOT_INBOX_ID=str(self.inbox), SESSION_SECRET="bench-" + "x" * 40,
                   SMTP_ADDRESS="127.0.0.1", SMTP_PORT=str(smtp_port), SMTP_SECURITY="none",
                   SMTP_FROM="support@example.com", PYTHONUNBUFFERED="1",
                   WEBHOOK_SECRET=WEBHOOK_SECRET, NOTIFY_DELAY_SECONDS="0",
                   STATE_DIR=tempfile.mkdtemp(prefix="portal-bench-"))
        self.process = subprocess.Popen([sys.executable, str(ROOT / "portal.py")], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_for_portal()

    def _wait_for_portal(self):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("the portal exited at start; run `python portal.py` to see why")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("the portal did not start listening within 30 s")

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.smtp.stop()
        self.fake.stop()

    def browser(self):
        return Browser("127.0.0.1", self.port)

    def sign_in(self, address="jane@example.com"):
        browser = self.browser()
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
