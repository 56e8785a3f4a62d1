"""Crash safety: SIGKILL during DATA keeps nothing partial; a 250 survives SIGKILL."""

import signal
import smtplib
import socket
import time


def open_data(server):
    s = socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220")
    s.sendall(b"EHLO crash.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for expect in (b"250", b"250", b"354"):
        assert f.readline().startswith(expect)
    return s, f


def test_sigkill_during_data_leaves_no_partial_message(server):
    s, _ = open_data(server)
    s.sendall(b"Subject: half\r\n\r\n" + b"partial line\r\n" * 5000)
    time.sleep(0.3)
    server.kill9()
    s.close()
    server.start()
    assert server.messages("alice@example.test") == []
    # No stray temporaries after restart either.
    assert list((server.data_dir / "blobs" / "tmp").iterdir()) == []
    # And the server takes mail again, with UID 1 (nothing was allocated).
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as c:
        c.sendmail("a@remote.test", ["alice@example.test"], b"Subject: after\r\n\r\nok\r\n")
    msgs = server.messages("alice@example.test")
    assert [m["uid"] for m in msgs] == [1]


def test_acknowledged_messages_survive_sigkill(server):
    sent = []
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as c:
        for i in range(40):
            body = f"Subject: durable {i}\r\nMessage-ID: <d{i}@remote.test>\r\n\r\nbody {i}\r\n".encode()
            c.sendmail("a@remote.test", ["bob@example.test"], body)
            sent.append(body)
        # Kill the instant the last 250 has been read, without QUIT.
        server.kill9()
    server.start()
    msgs = server.messages("bob@example.test")
    assert [m["uid"] for m in msgs] == list(range(1, 41))
    for m, body in zip(msgs, sent):
        assert server.message_bytes("bob@example.test", m["uid"]).endswith(body)


def test_graceful_shutdown_lets_a_transaction_finish(server):
    s, f = open_data(server)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    # New connections are no longer accepted...
    refused = False
    try:
        with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=2) as c:
            refused = c.recv(100) == b""
    except OSError:
        refused = True
    assert refused
    # ...but the open transaction completes.
    s.sendall(b"Subject: finishing\r\n\r\nstill here\r\n.\r\n")
    assert f.readline().startswith(b"250 2.0.0")
    s.sendall(b"QUIT\r\n")
    # Once the transaction is over the session may end either way: the QUIT is answered,
    # or the server says it is shutting down first.
    bye = f.readline()
    assert bye.startswith(b"221") or bye.startswith(b"421 4.3.2"), bye
    s.close()
    assert server.proc.wait(timeout=20) == 0
    server.start()
    assert len(server.messages("alice@example.test")) == 1
