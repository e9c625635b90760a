"""attachments.py alone: the streaming form parser, the type checks, the download headers."""

import io

import pytest

import attachments
from attachments import FormError, read_upload_form, safe_filename

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100
PDF = b"%PDF-1.7\n" + b"x" * 100


def multipart_environ(fields=(), files=(), boundary="----portal-test-boundary"):
    """A WSGI environ carrying a multipart body: fields [(name, value)], files [(name, filename, bytes)]."""
    body = io.BytesIO()
    for name, value in fields:
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode())
        body.write(value.encode() + b"\r\n")
    for name, filename, data in files:
        body.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; "
                   f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    raw = body.getvalue()
    return {"CONTENT_TYPE": f"multipart/form-data; boundary={boundary}", "CONTENT_LENGTH": str(len(raw)),
            "wsgi.input": io.BytesIO(raw)}


def parse(fields=(), files=(), max_files=5, max_bytes=1000):
    return read_upload_form(multipart_environ(fields, files), max_files, max_bytes)


def test_text_fields_and_files_are_read_with_crlf_made_lf():
    form = parse([("subject", "Printer"), ("message", "line one\r\nline two")],
                 [("files", "shot.png", PNG), ("files", "bill.pdf", PDF)])
    assert form.fields == {"subject": ["Printer"], "message": ["line one\nline two"]}
    assert [(u.filename, u.content_type, u.size) for u in form.uploads] == [
        ("shot.png", "image/png", len(PNG)), ("bill.pdf", "application/pdf", len(PDF))]
    assert b"".join(form.uploads[0].chunks()) == PNG
    assert form.problems == []
    form.close()


def test_an_empty_file_input_is_no_file():
    form = parse([("message", "hi")], [("files", "", b"")])
    assert form.uploads == [] and form.problems == [] and form.chosen == 0


@pytest.mark.parametrize("filename, data", [
    ("page.png", b"<!doctype html><script>alert(1)</script>"),  # an HTML page called .png
    ("photo.jpg", PNG),  # a PNG is not a JPEG
    ("notes.txt", b"text\x00binary"),
    ("image.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
    ("run.exe", b"MZ\x90\x00"),
    ("no-extension", PDF),
    ("fake.webp", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    ("fake.heic", b"\x00\x00\x00\x18ftypmp42"),
])
def test_a_file_whose_extension_or_first_bytes_are_not_allowed_is_refused(filename, data):
    form = parse(files=[("files", filename, data)])
    assert form.uploads == []
    assert [(p.key, p.filename) for p in form.problems] == [("upload_type", filename)]


@pytest.mark.parametrize("filename, data", [
    ("a.png", PNG), ("a.JPG", b"\xff\xd8\xff\xe0" + b"x" * 20), ("a.gif", b"GIF89a" + b"x" * 20),
    ("a.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 "), ("a.heic", b"\x00\x00\x00\x18ftypheic\x00\x00"),
    ("a.pdf", PDF), ("a.txt", "ünïcode text".encode()), ("a.csv", b"a,b\n1,2\n"), ("a.log", b"INFO ok\n"),
    ("a.doc", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"x" * 20), ("a.xlsx", b"PK\x03\x04" + b"x" * 20),
    ("a.docx", b"PK\x03\x04" + b"x" * 20), ("a.pptx", b"PK\x03\x04" + b"x" * 20),
    ("a.odt", b"PK\x03\x04" + b"x" * 20), ("a.ods", b"PK\x03\x04" + b"x" * 20), ("a.zip", b"PK\x05\x06" + b"\x00" * 18),
    ("a.xls", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"x" * 20), ("a.ppt", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"x"),
])
def test_every_allowed_type_is_accepted_with_its_own_first_bytes(filename, data):
    form = parse(files=[("files", filename, data)])
    assert [u.filename for u in form.uploads] == [filename] and form.problems == []


def test_too_many_files_is_said_once_and_the_first_ones_are_kept():
    form = parse(files=[("files", f"f{n}.png", PNG) for n in range(8)], max_files=5)
    assert len(form.uploads) == 5 and form.chosen == 8
    assert [p.key for p in form.problems] == ["upload_too_many"]


def test_a_file_over_the_limit_is_a_413_and_is_not_kept():
    form = parse(files=[("files", "big.pdf", PDF + b"x" * 2000), ("files", "ok.png", PNG)], max_bytes=1000)
    assert [(p.key, p.filename, p.status) for p in form.problems] == [("upload_too_large", "big.pdf", 413)]
    assert [u.filename for u in form.uploads] == ["ok.png"]


def test_an_empty_file_is_refused_by_name():
    form = parse(files=[("files", "empty.pdf", b"")])
    assert [(p.key, p.filename) for p in form.problems] == [("upload_empty", "empty.pdf")]


def test_a_large_file_is_spooled_to_disk_not_memory():
    form = parse(files=[("files", "big.txt", b"a" * 300_000)], max_bytes=1_000_000)
    assert form.uploads[0].file._rolled  # SpooledTemporaryFile moved to a real file
    form.close()


def test_text_fields_past_their_limit_are_a_413():
    with pytest.raises(FormError) as caught:
        parse([("message", "x" * (attachments.TEXT_FIELDS_MAX_BYTES + 1))])
    assert caught.value.status == 413


@pytest.mark.parametrize("environ", [
    {"CONTENT_TYPE": "multipart/form-data", "CONTENT_LENGTH": "10", "wsgi.input": io.BytesIO(b"x" * 10)},
    {"CONTENT_TYPE": "multipart/form-data; boundary=abc", "CONTENT_LENGTH": "10", "wsgi.input": io.BytesIO(b"not a form")},
    {"CONTENT_TYPE": "multipart/form-data; boundary=abc", "CONTENT_LENGTH": "x", "wsgi.input": io.BytesIO(b"")},
])
def test_a_broken_multipart_body_is_a_400(environ):
    with pytest.raises(FormError) as caught:
        read_upload_form(environ, 5, 1000)
    assert caught.value.status == 400


def test_invalid_utf8_in_a_text_field_is_a_400():
    environ = multipart_environ([("message", "x")])
    environ["wsgi.input"] = io.BytesIO(environ["wsgi.input"].getvalue().replace(b"\r\nx\r\n", b"\r\n\xff\r\n"))
    with pytest.raises(FormError):
        read_upload_form(environ, 5, 1000)


@pytest.mark.parametrize("untrusted, expected", [
    ("C:\\Users\\jane\\shot.png", "shot.png"),
    ("../../etc/passwd", "passwd"),
    ('evil"name\r\n.pdf', "evilname.pdf"),
    ("  spaced   name .txt ", "spaced name .txt"),
    ("résumé.pdf", "résumé.pdf"),
    ("x" * 300 + ".pdf", "x" * 146 + ".pdf"),
])
def test_file_names_are_made_plain(untrusted, expected):
    assert safe_filename(untrusted) == expected


@pytest.mark.parametrize("content_type, filename, served", [
    ("image/png", "a.png", "image/png"),
    ("text/html", "page.html", "application/octet-stream"),
    ("image/svg+xml", "logo.svg", "application/octet-stream"),
    ("text/html", "notes.txt", "text/plain; charset=utf-8"),  # the name's safe type, never HTML
    ("", "report.pdf", "application/pdf"),
    ("application/x-msdownload", "setup.exe", "application/octet-stream"),
])
def test_only_safe_types_are_served_under_their_own_name(content_type, filename, served):
    assert attachments.served_type(content_type, filename) == served


def test_download_headers_sandbox_the_file_and_encode_its_name():
    headers = dict(attachments.download_headers("application/pdf", "Factura nº 7.pdf", 12))
    assert headers["Content-Disposition"] == (
        "inline; filename=\"Factura n_ 7.pdf\"; filename*=UTF-8''Factura%20n%C2%BA%207.pdf")
    assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert headers["Cache-Control"].startswith("private")
    assert headers["Content-Length"] == "12"
    zipped = dict(attachments.download_headers("application/zip", "a.zip"))
    assert zipped["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize("size, lang, text", [
    (812, "en", "812 B"), (48_213, "en", "48 KB"), (2_400_000, "en", "2.4 MB"), (2_400_000, "es", "2,4 MB"),
    (10_000_000, "en", "10 MB"),
])
def test_human_sizes(size, lang, text):
    assert attachments.human_size(size, lang) == text


# ---------------------------------------------------------------------------
# KnownFiles: which files a customer may download, bounded
# ---------------------------------------------------------------------------

class _Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


def _thread(*attachment_ids):
    from types import SimpleNamespace
    return [SimpleNamespace(attachments=[SimpleNamespace(id=number) for number in attachment_ids])]


def test_known_files_keep_no_ticket_without_files():
    known = attachments.KnownFiles(clock=_Clock())
    known.remember(17, 1, _thread())
    known.remember(17, 2, _thread(5))
    assert len(known) == 1 and known.get(17, 2, 5).id == 5 and known.get(17, 1, 5) is None


def test_known_files_drop_expired_tickets_as_new_ones_come():
    clock = _Clock()
    known = attachments.KnownFiles(clock=clock)
    known.remember(17, 1, _thread(5))
    clock.now += known.TTL_SECONDS + 1
    assert known.get(17, 1, 5) is None
    known.remember(17, 2, _thread(6))
    assert len(known) == 1


def test_known_files_forget_the_oldest_past_max_files_but_never_the_newest(monkeypatch):
    monkeypatch.setattr(attachments.KnownFiles, "MAX_FILES", 3)
    known = attachments.KnownFiles(clock=_Clock())
    known.remember(17, 1, _thread(1, 2))
    known.remember(17, 2, _thread(3, 4))  # 4 files: the oldest ticket goes
    assert known.get(17, 1, 1) is None and known.get(17, 2, 3).id == 3
    known.remember(17, 3, _thread(5, 6, 7, 8))  # alone over the cap, and still kept
    assert len(known) == 1 and known.get(17, 3, 8).id == 8
