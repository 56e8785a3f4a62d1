"""A test DNS zone on loopback (dnslib, a real DNS server on UDP and TCP)."""

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from conftest import free_port


def txt(value: str):
    """A TXT record split into 255-byte strings, as DNS requires."""
    return TXT([value[i : i + 255] for i in range(0, len(value), 255)])


class Zone(BaseResolver):
    """A static zone; any name under tempfail.test answers SERVFAIL."""

    def __init__(self, records):
        self.records = records
        self.queries = []

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        qtype = QTYPE[request.q.qtype]
        self.queries.append((name, qtype))
        if name.endswith("tempfail.test"):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for rdata in self.records.get((name, qtype), []):
            reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
        if not reply.rr and not any(n == name for n, _ in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class Running:
    def __init__(self, port, zone, servers):
        self.port, self.zone, self.servers = port, zone, servers

    def stop(self):
        for s in self.servers:
            s.stop()


def start_zone(records) -> Running:
    """Serves `records` ({(name, type): [rdata]}) on one loopback port, UDP and TCP."""
    zone = Zone(records)
    port = free_port()
    quiet = DNSLogger(log="-request,-reply,-truncated", prefix=False)
    servers = [
        DNSServer(zone, port=port, address="127.0.0.1", logger=quiet),
        DNSServer(zone, port=port, address="127.0.0.1", tcp=True, logger=quiet),
    ]
    for s in servers:
        s.start_thread()
    return Running(port, zone, servers)
