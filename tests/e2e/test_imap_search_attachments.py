"""SEARCH BODY/TEXT find words in attachments (PDF, docx, text files), with Python's imaplib
against a running Mailfleet: messages delivered over SMTP and stored with APPEND are indexed
with their attachments' text; the same messages left unindexed are found by the scan, and
`mailfleet reindex` indexes them to the same answers."""

import email.mime.application
import email.mime.multipart
import email.mime.text
import imaplib
import io
import smtplib
import sqlite3
import ssl
import zipfile
import zlib

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def make_pdf(lines):
    """A one-page PDF showing `lines` in Helvetica, its content stream deflated, written by
    hand with a true cross-reference table."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL\n"
    for i, line in enumerate(lines):
        esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        content += ("T*\n" if i else "") + f"({esc}) Tj\n"
    content += "ET\n"
    stream = zlib.compress(content.encode("latin-1"))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for o in offsets:
        out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def make_docx(paragraphs):
    body = "".join(f"<w:p><w:r><w:t>{p}</w:t></w:r></w:p>" for p in paragraphs)
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        f"<w:body>{body}</w:body></w:document>"
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<Types xmlns="x"/>')
        z.writestr("word/document.xml", doc)
    return buf.getvalue()


def with_attachment(subject, body, maintype, subtype, name, data):
    m = email.mime.multipart.MIMEMultipart()
    m["From"] = "Ann <ann@remote.test>"
    m["To"] = "alice@example.test"
    m["Subject"] = subject
    m.attach(email.mime.text.MIMEText(body))
    if maintype == "text":
        part = email.mime.text.MIMEText(data, subtype)
    else:
        part = email.mime.application.MIMEApplication(data, subtype)
    part.add_header("Content-Disposition", "attachment", filename=name)
    m.attach(part)
    return m.as_bytes()


MESSAGES = [
    with_attachment("report", "see the report", "application", "pdf", "q.pdf",
                    make_pdf(["Quarterly figures for Zanzibar", "Pineapple exports rose"])),
    with_attachment("contract", "the contract", "application",
                    "vnd.openxmlformats-officedocument.wordprocessingml.document", "c.docx",
                    make_docx(["Lease agreement for Timbuktu", "Signed"])),
    with_attachment("data", "the data", "text", "csv", "d.csv", "city,count\nMontevideo,12\n"),
    with_attachment("broken", "a broken pdf", "application", "pdf", "x.pdf",
                    make_pdf(["Truncated away"])[:150]),
]


def login(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login("alice@example.test", PASSWORD)
    return c


def search(c, key, needle):
    c.literal = needle.encode()
    typ, data = c.uid("SEARCH", "CHARSET", "UTF-8", key)
    assert typ == "OK", data
    return [int(u) for u in data[0].split()]


def run_searches(c):
    return {
        "pdf word": search(c, "BODY", "zanzibar"),
        "pdf phrase": search(c, "TEXT", "PINEAPPLE EXPORTS"),
        "docx word": search(c, "BODY", "timbuktu"),
        "csv word": search(c, "BODY", "montevideo"),
        "short": search(c, "BODY", "zi"),
        "truncated pdf": search(c, "BODY", "truncated away"),
        "subject only": search(c, "SUBJECT", "zanzibar"),
        "body text": search(c, "BODY", "the contract"),
    }


WANT = {
    "pdf word": [1],
    "pdf phrase": [1],
    "docx word": [2],
    "csv word": [3],
    "short": [1],
    "truncated pdf": [],
    "subject only": [],
    "body text": [2],
}


def test_attachment_text_is_searched_indexed_scanned_and_reindexed(server):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        for m in MESSAGES[:3]:
            s.sendmail("ann@remote.test", ["alice@example.test"], m)
    c = login(server)
    typ, _ = c.append("INBOX", None, None, MESSAGES[3])
    assert typ == "OK"
    c.select("INBOX")
    assert run_searches(c) == WANT
    c.logout()

    # The attachments' text is in the index, under its own field.
    db = sqlite3.connect(server.data_dir / "metadata.sqlite3.fts")
    fields = {r[0] for r in db.execute("SELECT DISTINCT field FROM fts_docs")}
    assert "attachment" in fields, fields
    db.close()

    # Unindexed (as before the index existed): the scan extracts the same text.
    server.stop()
    db = sqlite3.connect(server.data_dir / "metadata.sqlite3")
    db.execute("INSERT OR REPLACE INTO fts_pending SELECT mailbox_id, uid, 0 FROM messages")
    db.commit()
    db.close()
    # The texts live in the index file beside the database.
    index = sqlite3.connect(server.data_dir / "metadata.sqlite3.fts")
    index.execute("DELETE FROM fts_docs")
    index.execute("DELETE FROM fts_indexed")
    index.commit()
    index.close()
    server.start()
    c = login(server)
    c.select("INBOX")
    assert run_searches(c) == WANT, "the scan reads attachments as the index does"
    r = server.cli("--json", "reindex", "alice@example.test")
    assert '"indexed":4' in r.stdout.replace(" ", ""), r.stdout
    assert run_searches(c) == WANT
    c.logout()
