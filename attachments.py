"""Files on tickets: what a customer may upload, and how Chatwoot's files are served back.

Uploads arrive as `multipart/form-data` and are parsed with the `multipart` package's
streaming parser (never by hand, never the deprecated `cgi` module). Each file goes
to a temporary file in chunks; a file past its size limit is not written further, so
neither memory nor disk ever holds more than the limits allow. A file is accepted
only when its extension is in ALLOWED_TYPES **and** its first bytes are what that
type starts with: a `.png` that is really an HTML page is refused. Problems are
collected, not raised, so the form can come back with the text the customer typed
and a sentence naming each refused file.

Downloads are proxied (contract part 2 §1.5): a Chatwoot `data_url` is a permanent,
unauthenticated capability URL on Chatwoot's host, so the browser only ever sees
`/tickets/<id>/attachments/<attachment id>`. The response headers here make a
hostile file harmless on the portal's origin, which it shares with Chatwoot's
dashboard: a type from SAFE_TYPES or `application/octet-stream`, `nosniff`, a CSP
sandbox, and `inline` only for images and PDF.
"""

import collections
import dataclasses
import re
import tempfile
import threading
import time
import unicodedata
import urllib.parse

import multipart

CHUNK_BYTES = 64 * 1024
# Files up to this size stay in memory while parsed; larger ones go to disk.
SPOOL_BYTES = 64 * 1024
FILENAME_MAX_CHARS = 150
# The text fields of an upload form (subject, message, tokens) together.
TEXT_FIELDS_MAX_BYTES = 256 * 1024

_OFFICE_ZIP = (b"PK\x03\x04",)
_OLE2 = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",)  # .doc, .xls, .ppt
# extension -> (content type sent to Chatwoot and served back, accepted first bytes;
# None: text, which has no signature but must hold no NUL byte).
ALLOWED_TYPES = {
    "png": ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    "jpg": ("image/jpeg", (b"\xff\xd8\xff",)),
    "jpeg": ("image/jpeg", (b"\xff\xd8\xff",)),
    "gif": ("image/gif", (b"GIF87a", b"GIF89a")),
    "webp": ("image/webp", ()),  # RIFF????WEBP, checked in _signature_matches
    "heic": ("image/heic", ()),  # ????ftypheic..., likewise
    "pdf": ("application/pdf", (b"%PDF-",)),
    "txt": ("text/plain", None),
    "log": ("text/plain", None),
    "csv": ("text/csv", None),
    "doc": ("application/msword", _OLE2),
    "xls": ("application/vnd.ms-excel", _OLE2),
    "ppt": ("application/vnd.ms-powerpoint", _OLE2),
    "docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", _OFFICE_ZIP),
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", _OFFICE_ZIP),
    "pptx": ("application/vnd.openxmlformats-officedocument.presentationml.presentation", _OFFICE_ZIP),
    "odt": ("application/vnd.oasis.opendocument.text", _OFFICE_ZIP),
    "ods": ("application/vnd.oasis.opendocument.spreadsheet", _OFFICE_ZIP),
    "zip": ("application/zip", (b"PK\x03\x04", b"PK\x05\x06")),
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
ACCEPT_ATTRIBUTE = ",".join("." + extension for extension in ALLOWED_TYPES)

# Types served back under their own name; anything else is application/octet-stream.
# Never text/html, image/svg+xml or anything a browser would run.
SAFE_TYPES = {content_type for content_type, _ in ALLOWED_TYPES.values()} | {
    "image/bmp", "image/avif", "audio/mpeg", "audio/ogg", "audio/wav", "audio/mp4", "video/mp4", "video/webm",
}
INLINE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/bmp", "image/avif",
                "application/pdf"}
# A downloaded file's own headers: a hostile file must never run as a page of
# this origin (Chatwoot's dashboard keeps its agent session in a script-readable cookie).
DOWNLOAD_CSP = "sandbox; default-src 'none'"


@dataclasses.dataclass
class Upload:
    filename: str
    content_type: str
    size: int
    file: object  # a binary file at position 0

    def chunks(self):
        self.file.seek(0)
        while chunk := self.file.read(CHUNK_BYTES):
            yield chunk


@dataclasses.dataclass(frozen=True)
class Problem:
    """One refused file (or the whole selection), for a localized sentence."""
    key: str  # i18n key: upload_too_many, upload_too_large, upload_empty, upload_type
    filename: str = ""
    status: int = 400


@dataclasses.dataclass
class UploadForm:
    fields: dict  # name -> [str], as urllib.parse.parse_qs gives
    uploads: list  # accepted Upload records
    problems: list  # Problem records
    chosen: int = 0  # files the customer picked, accepted or not

    def close(self):
        for upload in self.uploads:
            upload.file.close()
        self.uploads = []


class FormError(Exception):
    """The body is not a readable multipart form (or its text is too large)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def read_upload_form(environ, max_files, max_file_bytes):
    """Parse a multipart body from `environ`; files are checked against the limits.

    Raises FormError for a body that is not multipart form data at all.
    """
    _, options = multipart.parse_options_header(environ.get("CONTENT_TYPE", ""))
    boundary = options.get("boundary", "")
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        raise FormError(400) from None
    if not boundary or length < 0:
        raise FormError(400)
    stream = environ["wsgi.input"]
    form = UploadForm({}, [], [])
    text_bytes = 0
    part = None  # the segment being read: (segment, buffer or spool file, state)
    try:
        parser = multipart.PushMultipartParser(boundary, length, max_segment_count=64)
        with parser:
            for event in parser.parse_blocking(stream.read, CHUNK_BYTES):
                if isinstance(event, multipart.MultipartSegment):
                    part = _Part(event, max_file_bytes)
                elif event:
                    text_bytes += len(event) if part.is_text else 0
                    if text_bytes > TEXT_FIELDS_MAX_BYTES:
                        raise FormError(413)
                    part.write(event)
                else:
                    part.finish(form, max_files)
                    part = None
    except multipart.MultipartError:
        if part is not None:
            part.discard()
        form.close()
        raise FormError(400) from None
    except BaseException:
        if part is not None:
            part.discard()
        form.close()
        raise
    return form


class _Part:
    """One segment while it streams in: a text field, or a file going to a spool file."""

    def __init__(self, segment, max_file_bytes):
        self.name = segment.name or ""
        self.unsafe_filename = segment.filename
        self.is_text = self.unsafe_filename is None
        self.max_file_bytes = max_file_bytes
        self.size = 0
        self.head = b""  # the first bytes, for the signature check
        self.too_large = False
        self.text = bytearray() if self.is_text else None
        self.spool = None if self.is_text else tempfile.SpooledTemporaryFile(SPOOL_BYTES)

    def write(self, chunk):
        self.size += len(chunk)
        if self.is_text:
            self.text += chunk
            return
        if len(self.head) < 16:
            self.head += chunk[: 16 - len(self.head)]
        if self.too_large:
            return  # read to the end, keep nothing more
        if self.size > self.max_file_bytes:
            self.too_large = True
            self.spool.close()
            return
        self.spool.write(chunk)

    def finish(self, form, max_files):
        if self.is_text:
            try:
                value = self.text.decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(400) from None
            form.fields.setdefault(self.name, []).append(value.replace("\r\n", "\n"))
            return
        filename = safe_filename(self.unsafe_filename)
        if not filename and self.size == 0:
            self.spool.close()  # an <input type=file> with nothing chosen
            return
        form.chosen += 1
        problem = None
        extension = filename.rpartition(".")[2].lower() if "." in filename else ""
        if form.chosen > max_files:
            problem = Problem("upload_too_many", filename)
        elif self.too_large:
            problem = Problem("upload_too_large", filename, 413)
        elif self.size == 0:
            problem = Problem("upload_empty", filename)
        elif extension not in ALLOWED_TYPES or not self._signature_matches(extension):
            problem = Problem("upload_type", filename)
        if problem is not None:
            self.discard()
            if problem.key != "upload_too_many" or form.chosen == max_files + 1:  # say "too many" once
                form.problems.append(problem)
            return
        form.uploads.append(Upload(filename, ALLOWED_TYPES[extension][0], self.size, self.spool))

    def _signature_matches(self, extension):
        """The file's first bytes are those of its extension's type."""
        signatures = ALLOWED_TYPES[extension][1]
        if signatures is None:  # text: any encoding, but no NUL in the first bytes
            self.spool.seek(0)
            return b"\x00" not in self.spool.read(8192)
        head = self.head
        if extension == "webp":
            return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
        if extension == "heic":
            return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS
        return any(head.startswith(signature) for signature in signatures)

    def discard(self):
        if self.spool is not None:
            self.spool.close()


def safe_filename(untrusted_name):
    """A plain file name: no folders, no control or quote characters, bounded length."""
    name = (untrusted_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(c for c in name if unicodedata.category(c)[0] != "C" and c not in '"<>|*?:;')
    name = " ".join(name.split()).strip(". ")
    if len(name) > FILENAME_MAX_CHARS:
        stem, dot, extension = name.rpartition(".")
        extension = extension[:10] if dot else ""
        name = stem[: FILENAME_MAX_CHARS - len(extension) - 1] + (dot + extension if dot else "")
    return name


# ---------------------------------------------------------------------------
# Serving Chatwoot's files back
# ---------------------------------------------------------------------------

def served_type(content_type, filename):
    """The Content-Type to send: the file's own when it is on the safe list."""
    content_type = (content_type or "").split(";")[0].strip().lower()
    if content_type not in SAFE_TYPES:
        extension = filename.rpartition(".")[2].lower() if "." in filename else ""
        content_type = ALLOWED_TYPES.get(extension, ("application/octet-stream",))[0]
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    return content_type


def download_headers(content_type, filename, length=None):
    """Headers of a proxied file (RFC 6266 Content-Disposition, sandboxed)."""
    base_type = content_type.split(";")[0]
    disposition = "inline" if base_type in INLINE_TYPES else "attachment"
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", filename) or "file"
    quoted = urllib.parse.quote(filename or "file", safe="")
    headers = [
        ("Content-Disposition", f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quoted}"),
        ("Content-Security-Policy", DOWNLOAD_CSP),
        ("Cache-Control", "private, max-age=600"),
    ]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return headers


def open_download(client, attachment, thumbnail=False):
    """(Content-Type, headers, FileStream) of a file (or its thumbnail) from Chatwoot."""
    use_thumbnail = thumbnail and attachment.is_image and attachment.thumb_url
    stream = client.open_file(attachment.thumb_url if use_thumbnail else attachment.data_url)
    filename = safe_filename(attachment.filename) or f"file-{attachment.id}"
    # Chatwoot's record of the type (4.13+) first; a thumbnail is whatever image it made.
    declared = stream.content_type if use_thumbnail else (attachment.content_type or stream.content_type)
    content_type = served_type(declared, filename)
    return content_type, download_headers(content_type, filename, stream.length), stream


class KnownFiles:
    """Which attachments a contact may download: those of the public messages on the
    ticket pages they opened, for TTL seconds.

    The ticket page has just checked ownership and read the thread, so the
    thumbnails and links on it cost no more Chatwoot calls than the file itself.
    A link opened later, or elsewhere, checks everything again.

    Only tickets with files are kept (most have none), and entries go once
    expired or past MAX_FILES: forgetting one early costs its next download a
    read of the thread, nothing more.
    """

    TTL_SECONDS = 600
    # An Attachment holds Chatwoot's two long URLs: ~800 bytes a file, so ~2 MB
    # at most, the files of the tickets a few hundred customers opened lately.
    MAX_FILES = 2000

    def __init__(self, clock=time.time):
        self._clock = clock
        # (contact, ticket) -> (expiry, {id: Attachment}); least recently remembered
        # first, which is also soonest to expire: every entry lives TTL_SECONDS.
        self._tickets = collections.OrderedDict()
        self._files = 0  # attachments in self._tickets
        self._lock = threading.Lock()

    def remember(self, contact_id, ticket_id, thread):
        files = {a.id: a for message in thread for a in message.attachments}
        now = self._clock()
        with self._lock:
            self._forget((contact_id, ticket_id))
            if files:
                self._tickets[(contact_id, ticket_id)] = (now + self.TTL_SECONDS, files)
                self._files += len(files)
            while self._tickets:  # the oldest first; a ticket with more files than the cap stays alone
                key, (expiry, _) = next(iter(self._tickets.items()))
                if expiry >= now and (self._files <= self.MAX_FILES or len(self._tickets) == 1):
                    break
                self._forget(key)

    def get(self, contact_id, ticket_id, attachment_id):
        with self._lock:
            entry = self._tickets.get((contact_id, ticket_id))
        if entry is None or entry[0] < self._clock():
            return None
        return entry[1].get(attachment_id)

    def __len__(self):
        with self._lock:
            return len(self._tickets)

    def _forget(self, key):
        """Drop one ticket's entry, if any (caller holds the lock)."""
        entry = self._tickets.pop(key, None)
        if entry is not None:
            self._files -= len(entry[1])


def human_size(size, lang):
    """'812 bytes', '48 KB', '2.4 MB' (decimal units, as phones and browsers show)."""
    decimal = "," if lang == "es" else "."
    if size < 1000:
        return f"{size} B"
    for unit, scale in (("KB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if size < scale * 1000 or unit == "GB":
            value = size / scale
            text = f"{value:.1f}" if value < 10 else f"{value:.0f}"
            return text.replace(".", decimal) + " " + unit
    return f"{size} B"
