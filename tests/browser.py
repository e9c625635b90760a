"""A small browser for end-to-end tests: real sockets, cookies, forms, redirects.

It does what a person's browser does with the portal's pages and nothing more:
keeps cookies per name, follows redirects, and submits a page's own forms with
their hidden fields (so CSRF tokens travel the way they do for real users).
"""

import html.parser
import http.client
import http.cookies
import secrets
import urllib.parse


class Form:
    def __init__(self, action, method, enctype="application/x-www-form-urlencoded"):
        self.action, self.method, self.enctype = action, method, enctype
        self.fields = {}
        self.file_inputs = []  # names of <input type=file>
        self.buttons = []  # (name, value)

    def __repr__(self):
        return f"<Form {self.method} {self.action} {sorted(self.fields)}>"


class _FormParser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms, self._form, self._textarea = [], None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self._form = Form(attrs.get("action", ""), attrs.get("method", "get").upper(),
                              attrs.get("enctype") or "application/x-www-form-urlencoded")
            self.forms.append(self._form)
        elif self._form is not None and tag == "input" and attrs.get("name"):
            if attrs.get("type") in ("submit", "button"):
                self._form.buttons.append((attrs["name"], attrs.get("value", "")))
            elif attrs.get("type") == "file":
                self._form.file_inputs.append(attrs["name"])
            else:
                self._form.fields[attrs["name"]] = attrs.get("value", "")
        elif self._form is not None and tag == "button" and attrs.get("name"):
            self._form.buttons.append((attrs["name"], attrs.get("value", "")))
        elif self._form is not None and tag == "textarea" and attrs.get("name"):
            self._textarea = attrs["name"]
            self._form.fields[self._textarea] = ""

    def handle_data(self, data):
        if self._textarea:
            self._form.fields[self._textarea] += data

    def handle_endtag(self, tag):
        if tag == "textarea":
            self._textarea = None
        elif tag == "form":
            self._form = None


class Page:
    def __init__(self, status, headers, body, url):
        self.status, self.headers, self.body, self.url = status, headers, body, url
        self.text = body.decode("utf-8", "replace")

    def header(self, name):
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def headers_named(self, name):
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def forms(self):
        parser = _FormParser()
        parser.feed(self.text)
        return parser.forms

    def form(self, action_suffix):
        matches = [f for f in self.forms if f.action.endswith(action_suffix)]
        assert matches, f"no form posting to ...{action_suffix} on {self.url}: {self.forms}"
        return matches[0]

    def __contains__(self, text):
        return text in self.text


def encode_multipart(fields, files=()):
    """(body, content type) of a multipart/form-data request, as browsers build it."""
    boundary = "----PortalTestBoundary" + secrets.token_hex(8)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + str(value).encode() + b"\r\n")
    for name, filename, data, *content_type in files:
        kind = content_type[0] if content_type else "application/octet-stream"
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Browser:
    def __init__(self, host, port, headers=None):
        self.host, self.port = host, port
        self.cookies = {}
        self.extra_headers = dict(headers or {})
        self.history = []

    def request(self, method, url, body=None, headers=None, follow=True):
        for _ in range(10):
            page = self._once(method, url, body, headers or {})
            if not follow or page.status not in (301, 302, 303, 307, 308):
                return page
            url = urllib.parse.urljoin(url, page.header("Location"))
            method, body = "GET", None
        raise AssertionError("too many redirects")

    def get(self, url, **kwargs):
        return self.request("GET", url, **kwargs)

    def post(self, url, fields, **kwargs):
        body = urllib.parse.urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return self.request("POST", url, body, headers, **kwargs)

    def post_multipart(self, url, fields, files=(), **kwargs):
        """POST as multipart/form-data; files are (field, filename, bytes[, content type])."""
        body, content_type = encode_multipart(fields, files)
        return self.request("POST", url, body, {"Content-Type": content_type}, **kwargs)

    def submit(self, page, action_suffix, follow=True, button=None, files=None, **changes):
        """Post one of the page's forms with its own fields, changed as given.

        A form with enctype multipart/form-data is sent as a browser sends it: each
        file input once with nothing chosen, unless `files` names some.
        """
        form = page.form(action_suffix)
        fields = dict(form.fields)
        if button is not None:
            fields[button[0]] = button[1]
        fields.update(changes)
        url = urllib.parse.urljoin(page.url, form.action)
        if form.enctype == "multipart/form-data":
            if files is None:
                files = [(name, "", b"") for name in form.file_inputs]
            return self.post_multipart(url, fields, files, follow=follow)
        assert not files, f"the form posting to {form.action} takes no files"
        return self.post(url, fields, follow=follow)

    def _once(self, method, url, body, headers):
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        all_headers = {**self.extra_headers, **headers}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            page = Page(response.status, response.getheaders(), response.read(),
                        f"http://{self.host}:{self.port}{path}")
        finally:
            connection.close()
        for value in page.headers_named("Set-Cookie"):
            cookie = http.cookies.SimpleCookie()
            cookie.load(value)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        self.history.append((method, path, page.status))
        return page
