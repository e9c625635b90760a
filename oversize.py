"""Request bodies over the limits: waitress keeps only their beginning, and the
portal reads the text typed into the form back out of it.

Why. waitress reads a whole request body (to a temporary file past 512 KB) before
the application sees the request. A body announced larger than its
`max_request_body_size` it refuses at once with its own plain-English 413, which
carries none of the portal's security headers and none of what the customer
typed. `PortalParser` changes only that: such a request goes to the portal like
any other, its body cut to its beginning, so the portal answers with its own
localized 413 page (the form again, filled in), and the connection closes.

How (waitress 3.0, `parser.py` `HTTPRequestParser.received`): waitress marks the
request `RequestEntityTooLarge` as soon as the headers announce a Content-Length
of `max_request_body_size` or more (or, for a chunked body, once that many bytes
came in). `PortalParser` clears that error and asks for `Connection: close`, then
  - for a form (multipart or url-encoded) reads on until the text fields are in:
    a multipart body up to its first file part, at most TEXT_PREFIX_BYTES;
  - for any other body reads nothing more: there is no typed text to keep.
Whatever else came in the same read is dropped. `CONTENT_LENGTH` stays what the
client announced, so the portal refuses the request by length before reading
(portal.Request.read_body_limit_check) and reads back only the prefix
(`text_fields`). Memory per such request: TEXT_PREFIX_BYTES, never disk.

Measured (tests/test_kept_input.py does the same through a socket): 2 GB
announced, the text and 100 KB of a file sent, the page comes back at once;
the same body sent 500 bytes at a time gets it once the first file part starts;
nothing past the prefix is read or kept.

Limits. A client that announces a form and stops before its text fields are
whole gets no page, only waitress' channel_timeout (browsers send the fields
first). A chunked body (browsers never send one) is still read up to
`max_request_body_size`, as waitress does, before it is cut. Closing with the
rest of an upload unread makes the kernel reset the connection: Linux clients
read the page before the reset, but a client that is still writing may report
the reset instead (draining the upload would mean reading past the limit).
"""

import urllib.parse

import multipart
import waitress.server
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.receiver import FixedStreamReceiver
from waitress.utilities import RequestEntityTooLarge

# Room for every text field of a portal form in any script: a 10,000-character
# message and a 150-character subject at 4 UTF-8 bytes a character, the tokens
# and the part headers come to about 41 KB.
TEXT_PREFIX_BYTES = 64 * 1024


class PortalParser(HTTPRequestParser):
    """waitress' request parser, except that an oversized body is cut, not refused."""

    body_cut = False
    files_begin = None  # for a cut multipart body: spots where its files start

    def received(self, data):
        consumed = super().received(data)
        if isinstance(self.error, RequestEntityTooLarge):
            return self._cut(data, consumed)
        if self.body_cut and not self.completed and self.files_begin and self.files_begin(data[:consumed]):
            self.completed = True  # the text fields are all in: no need to wait for more
        if self.body_cut and self.completed:
            return len(data)  # the rest of this read is dropped, never parsed as a request
        return consumed

    def _cut(self, data, consumed):
        self.error = None
        self.body_cut = True
        # waitress closes the connection after answering a request that asked for it.
        self.headers["CONNECTION"] = "close"
        if self.chunked:
            # Cut after max_request_body_size bytes: as long as anything the
            # portal accepts, so its length check refuses it.
            self.headers["CONTENT_LENGTH"] = str(self.body_bytes_received)
            return len(data)
        content_type, options = multipart.parse_options_header(self.headers.get("CONTENT_TYPE", ""))
        if content_type == "multipart/form-data" and options.get("boundary"):
            self.files_begin = _FilesBegin(options["boundary"])
        elif content_type != "application/x-www-form-urlencoded":
            return len(data)  # no typed text to keep: answered at once, with no body
        # Refused at its headers: read the beginning of the body after all.
        self.completed = False
        self.body_rcv = FixedStreamReceiver(TEXT_PREFIX_BYTES, self.body_rcv.getbuf())
        return consumed


class _FilesBegin:
    """Fed a multipart body chunk by chunk: true once its first file part (or
    anything the portal could not read as a form) shows up. Browsers send the
    fields in the order of the page, and the portal's forms end with the files."""

    def __init__(self, boundary):
        self.parser = multipart.PushMultipartParser(boundary, max_segment_count=64)

    def __call__(self, chunk):
        try:
            for event in self.parser.parse(chunk):
                if isinstance(event, multipart.MultipartSegment) and event.filename is not None:
                    return True
        except multipart.MultipartError:
            return True
        return False


class PortalChannel(HTTPChannel):
    parser_class = PortalParser


def create_server(application, **options):
    """waitress' create_server, with PortalChannel on every listening socket."""
    server = waitress.server.create_server(application, **options)
    # One address gives one server; a host name with several addresses gives a
    # MultiSocketServer whose map holds one server per address.
    listeners = getattr(server, "map", {}).values() if not hasattr(server, "channel_class") else [server]
    for listener in listeners:
        if isinstance(listener, waitress.server.BaseWSGIServer):
            listener.channel_class = PortalChannel
    return server


def text_fields(environ):
    """name -> [value] of the text fields found whole in the first TEXT_PREFIX_BYTES
    of an over-limit body (a multipart or url-encoded form); reads no further.

    Values are as posted (the caller strips control characters); a field cut by
    the end of the prefix is left out rather than shown truncated, and so are files.
    """
    content_type, options = multipart.parse_options_header(environ.get("CONTENT_TYPE", ""))
    untrusted_prefix = environ["wsgi.input"].read(TEXT_PREFIX_BYTES)
    fields = {}
    if content_type == "application/x-www-form-urlencoded":
        complete = untrusted_prefix.rpartition(b"&")[0]
        try:
            parsed = urllib.parse.parse_qs(complete.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except (UnicodeDecodeError, ValueError):
            return {}
        for name, values in parsed.items():
            fields[name] = [value.replace("\r\n", "\n") for value in values]
        return fields
    if content_type != "multipart/form-data" or not options.get("boundary"):
        return {}
    name, text = None, None  # the text field being read
    parser = multipart.PushMultipartParser(options["boundary"], max_segment_count=64)
    try:
        for event in parser.parse(untrusted_prefix):
            if isinstance(event, multipart.MultipartSegment):
                name, text = (event.name, bytearray()) if event.filename is None else (None, None)
            elif event and text is not None:
                text += event
            elif not event and text is not None:
                try:
                    fields.setdefault(name, []).append(text.decode("utf-8").replace("\r\n", "\n"))
                except UnicodeDecodeError:
                    pass
                name, text = None, None
    except multipart.MultipartError:
        pass  # not a well-formed form: what was read whole is kept
    finally:
        parser.close(check_complete=False)  # the body ends early on purpose
    return fields
