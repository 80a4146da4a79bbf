# cython: language_level=3
"""Capture reader: a whole pcap or pcapng file's RTP flows in one pass in C.

``scan(buf, min_packets)`` walks the capture in ``buf`` (the file's bytes)
with the GIL released: the file framing (classic pcap in either
byte order, microsecond, nanosecond or Kuznetzov's modified headers; pcapng
sections, interface description blocks with their own link type, timestamp
resolution and offset, enhanced and obsolete packet blocks), the link layer,
IPv4/IPv6 and UDP, and the RTP check. Each RTP-looking datagram is filed
under its flow (UDP 5-tuple direction, a hash table) with its arrival time,
payload type, SSRC and whether its payload is one RFC 4733 event; no Python
object is made per frame or per packet. What it returns is one buffer of
every kept flow's packets back to back (flows in first-seen order, packets in
capture order) and numpy arrays beside it; engine/callvault/media/capture.py
builds the flows from them. docs/format.md section 3 states the rules; the
skip reasons are ``SKIP_REASONS``.

A capture cut short (a recorder killed mid-write) keeps every frame before
the cut; a frame whose record runs past the end of the file is kept as far
as it goes (its datagram then fails the UDP length check), as libpcap does.
A file that starts with neither header is a ``ValueError`` naming why.
"""
import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.math cimport llround, pow
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset

cnp.import_array()

# Link types (tcpdump.org/linktypes.html), as capture.py names them.
DEF LT_NULL = 0
DEF LT_ETHERNET = 1
DEF LT_RAW = 101
DEF LT_LINUX_SLL = 113
DEF LT_IPV4 = 228
DEF LT_IPV6 = 229
DEF LT_LINUX_SLL2 = 276

DEF KEY = 40            # version (1), src (16), dst (16), sport, dport (2 + 2), 3 zero bytes
DEF MAX_IFACES = 256    # pcapng interfaces per section this reader follows

# Why a frame was not used; ``skipped`` counts are indexed by these (capture.py's names).
SKIP_REASONS = (
    "bad_link",        # shorter than its link header
    "not_ip",          # not IPv4 or IPv6
    "bad_ip",          # shorter than its IP header (or IPv4 with another version)
    "not_udp",         # another protocol (IPv6 extension headers are not followed)
    "ip_fragment",     # an IPv4 fragment (more-fragments flag or an offset)
    "bad_udp",         # shorter than the UDP header
    "truncated_udp",   # UDP length beyond the captured bytes (or below 8)
    "not_rtp",         # a datagram that is not RTP v2 (or is RTCP)
    "unknown_interface",  # a pcapng packet naming an interface not described before it
)
DEF S_BAD_LINK = 0
DEF S_NOT_IP = 1
DEF S_BAD_IP = 2
DEF S_NOT_UDP = 3
DEF S_FRAGMENT = 4
DEF S_BAD_UDP = 5
DEF S_TRUNC_UDP = 6
DEF S_NOT_RTP = 7
DEF S_UNKNOWN_IF = 8
DEF N_REASONS = 9

class UnsupportedLinkType(Exception):
    """A frame of a link type this reader does not parse; ``args[0]`` is the link type."""


# scan's internal results
DEF OK = 0
DEF E_NOMEM = -1
DEF E_LINKTYPE = -2


cdef struct Packet:
    int64_t off          # RTP packet's offset in the capture buffer
    int64_t arrival_us
    int32_t length
    int32_t flow
    uint32_t ssrc
    uint8_t pt
    uint8_t event_like   # dynamic PT whose payload is exactly one 4-byte RFC 4733 event


cdef struct Flow:
    uint8_t key[KEY]
    int64_t packets


cdef struct Scan:
    const uint8_t *buf
    int64_t size
    Packet *pk
    int64_t n, cap
    Flow *flows
    int32_t nflows, flow_cap
    int32_t *table       # open addressing: flow index + 1, 0 = empty
    int64_t table_cap    # a power of two, at least twice nflows
    int64_t skipped[N_REASONS]
    int64_t datagrams
    int64_t bad_linktype


cdef struct Iface:
    uint32_t linktype
    int64_t units        # timestamp units per second (if_tsresol)
    int pow2             # units is 2 ** exponent (then ``exponent`` holds it)
    int exponent
    int64_t offset_s     # if_tsoffset


cdef inline uint16_t be16(const uint8_t *p) noexcept nogil:
    return <uint16_t>((p[0] << 8) | p[1])


cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint32_t le32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline uint32_t u32(const uint8_t *p, bint big) noexcept nogil:
    return be32(p) if big else le32(p)


cdef inline uint16_t u16(const uint8_t *p, bint big) noexcept nogil:
    return be16(p) if big else <uint16_t>((p[1] << 8) | p[0])


cdef inline uint64_t fnv1a(const uint8_t *k) noexcept nogil:
    cdef uint64_t h = 1469598103934665603ULL
    cdef int i
    for i in range(KEY):
        h = (h ^ k[i]) * 1099511628211ULL
    return h


cdef int grow_table(Scan *s) noexcept nogil:
    cdef int64_t cap = s.table_cap * 2 if s.table_cap else 1024
    cdef int32_t *t = <int32_t *>calloc(cap, sizeof(int32_t))
    cdef int32_t f
    cdef uint64_t h
    if t == NULL:
        return E_NOMEM
    for f in range(s.nflows):
        h = fnv1a(s.flows[f].key) & <uint64_t>(cap - 1)
        while t[h]:
            h = (h + 1) & <uint64_t>(cap - 1)
        t[h] = f + 1
    free(s.table)
    s.table = t
    s.table_cap = cap
    return OK


cdef int32_t flow_of(Scan *s, const uint8_t *key) noexcept nogil:
    """The flow index of ``key`` (a new flow when unseen), or E_NOMEM."""
    cdef uint64_t h
    cdef int32_t f
    cdef Flow *grown
    if 2 * (<int64_t>s.nflows + 1) > s.table_cap and grow_table(s) != OK:
        return E_NOMEM
    h = fnv1a(key) & <uint64_t>(s.table_cap - 1)
    while s.table[h]:
        f = s.table[h] - 1
        if memcmp(s.flows[f].key, key, KEY) == 0:
            return f
        h = (h + 1) & <uint64_t>(s.table_cap - 1)
    if s.nflows == s.flow_cap:
        grown = <Flow *>realloc(s.flows, (s.flow_cap * 2 + 16) * sizeof(Flow))
        if grown == NULL:
            return E_NOMEM
        s.flows = grown
        s.flow_cap = s.flow_cap * 2 + 16
    f = s.nflows
    memcpy(s.flows[f].key, key, KEY)
    s.flows[f].packets = 0
    s.nflows += 1
    s.table[h] = f + 1
    return f


cdef int rtp_payload_bytes(const uint8_t *p, int64_t n) noexcept nogil:
    """The RTP payload's size (after CSRCs and extension, before padding), -1 when
    the header does not fit (capture.py's former ``_rtp_payload_bytes``)."""
    cdef int64_t size = 12 + 4 * (p[0] & 0x0F)
    cdef int64_t end = n
    if p[0] & 0x10:
        if n < size + 4:
            return -1
        size += 4 + 4 * be16(p + size + 2)
    if p[0] & 0x20:
        end -= p[n - 1]
    return <int>(end - size) if end >= size else -1


cdef int frame(Scan *s, uint32_t linktype, int64_t off, int64_t caplen,
               int64_t arrival_us) noexcept nogil:
    """One captured frame: link, IP and UDP headers; an RTP datagram is filed."""
    cdef const uint8_t *f = s.buf + off
    cdef const uint8_t *ip
    cdef const uint8_t *udp
    cdef const uint8_t *rtp
    cdef int64_t n, o, ihl, total, udp_len, ulen
    cdef uint32_t etype, family
    cdef uint8_t key[KEY]
    cdef int32_t fl
    cdef Packet *grown
    cdef Packet *p
    linktype &= 0xFFFF  # the upper bits of a pcap link type carry FCS information
    if linktype == LT_ETHERNET:
        if caplen < 14:
            s.skipped[S_BAD_LINK] += 1
            return OK
        etype = be16(f + 12)
        o = 14
        while (etype == 0x8100 or etype == 0x88A8 or etype == 0x9100) and caplen >= o + 4:
            etype = be16(f + o + 2)
            o += 4
    elif linktype == LT_LINUX_SLL:
        if caplen < 16:
            s.skipped[S_BAD_LINK] += 1
            return OK
        etype = be16(f + 14)
        o = 16
    elif linktype == LT_LINUX_SLL2:
        if caplen < 20:
            s.skipped[S_BAD_LINK] += 1
            return OK
        etype = be16(f)
        o = 20
    elif linktype == LT_RAW or linktype == LT_IPV4 or linktype == LT_IPV6:
        if caplen < 1:
            s.skipped[S_BAD_LINK] += 1
            return OK
        etype = 0x0800 if f[0] >> 4 == 4 else 0x86DD
        o = 0
    elif linktype == LT_NULL:
        if caplen < 4:
            s.skipped[S_BAD_LINK] += 1
            return OK
        family = le32(f)
        if family > 0xFFFF:  # written on a big-endian host
            family = be32(f)
        # AF_INET is 2 everywhere; AF_INET6 is 10, 24, 28 or 30 depending on the OS.
        etype = 0x0800 if family == 2 else 0x86DD
        o = 4
    else:
        s.bad_linktype = linktype
        return E_LINKTYPE
    ip = f + o
    n = caplen - o
    memset(key, 0, KEY)
    if etype == 0x0800:
        if n < 20 or ip[0] >> 4 != 4:
            s.skipped[S_BAD_IP] += 1
            return OK
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            s.skipped[S_NOT_UDP] += 1
            return OK
        if be16(ip + 6) & 0x3FFF:  # more-fragments flag or a non-zero offset
            s.skipped[S_FRAGMENT] += 1
            return OK
        key[0] = 4
        memcpy(key + 1, ip + 12, 4)
        memcpy(key + 17, ip + 16, 4)
        total = be16(ip + 2)
        if total > n:
            total = n
        udp = ip + ihl
        udp_len = total - ihl if total > ihl else 0
    elif etype == 0x86DD:
        if n < 40:
            s.skipped[S_BAD_IP] += 1
            return OK
        if ip[6] != 17:  # extension headers before UDP are not followed
            s.skipped[S_NOT_UDP] += 1
            return OK
        key[0] = 6
        memcpy(key + 1, ip + 8, 32)
        udp = ip + 40
        udp_len = n - 40
    else:
        s.skipped[S_NOT_IP] += 1
        return OK
    if udp_len < 8:
        s.skipped[S_BAD_UDP] += 1
        return OK
    ulen = be16(udp + 4)
    if ulen < 8 or ulen > udp_len:
        s.skipped[S_TRUNC_UDP] += 1
        return OK
    s.datagrams += 1
    rtp = udp + 8
    n = ulen - 8
    # RTP version 2, and not RTCP (packet types 192..223 sit where RTP has M+PT).
    if n < 12 or rtp[0] >> 6 != 2 or 192 <= rtp[1] <= 223:
        s.skipped[S_NOT_RTP] += 1
        return OK
    memcpy(key + 33, udp, 4)  # source and destination ports
    fl = flow_of(s, key)
    if fl < 0:
        return E_NOMEM
    if s.n == s.cap:
        grown = <Packet *>realloc(s.pk, (s.cap * 2 + 1024) * sizeof(Packet))
        if grown == NULL:
            return E_NOMEM
        s.pk = grown
        s.cap = s.cap * 2 + 1024
    p = &s.pk[s.n]
    s.n += 1
    p.off = rtp - s.buf
    p.length = <int32_t>n
    p.arrival_us = arrival_us
    p.flow = fl
    p.pt = rtp[1] & 0x7F
    p.ssrc = be32(rtp + 8)
    p.event_like = p.pt >= 96 and rtp_payload_bytes(rtp, n) == 4
    s.flows[fl].packets += 1
    return OK


cdef int scan_pcap(Scan *s, bint big, bint nano, int64_t header) noexcept nogil:
    """Classic pcap: 24-byte file header, then records of ``header`` bytes + data."""
    cdef uint32_t linktype = u32(s.buf + 20, big)
    cdef int64_t off = 24, caplen, sec, frac, us
    cdef int rc
    while off + header <= s.size:
        sec = u32(s.buf + off, big)
        frac = u32(s.buf + off + 4, big)
        caplen = u32(s.buf + off + 8, big)
        us = sec * 1000000 + ((frac + 500) // 1000 if nano else frac)
        off += header
        if caplen > s.size - off:  # cut short: the frame as far as it goes
            caplen = s.size - off
        rc = frame(s, linktype, off, caplen, us)
        if rc != OK:
            return rc
        off += caplen
    return OK


cdef int64_t ng_time_us(const Iface *i, uint64_t t) noexcept nogil:
    """A pcapng timestamp (``t`` units of the interface's resolution) in microseconds."""
    # unsigned arithmetic: a hostile time or offset wraps (defined), never traps
    cdef uint64_t offset = <uint64_t>i.offset_s * 1000000ULL, q, r
    if i.pow2:
        return <int64_t>(<uint64_t>llround(<double>t / pow(2.0, i.exponent) * 1e6) + offset)
    if i.units <= 1000000:
        return <int64_t>(t * <uint64_t>(1000000 // i.units) + offset)
    q = <uint64_t>(i.units // 1000000)
    r = t % q
    return <int64_t>(t // q + (1 if 2 * r >= q else 0) + offset)


cdef void read_idb_options(const uint8_t *b, int64_t n, bint big, Iface *i) noexcept nogil:
    """if_tsresol (9) and if_tsoffset (14) from an IDB's options (``n`` bytes)."""
    cdef int64_t o = 0, ln
    cdef uint16_t code
    cdef uint8_t v
    cdef int k
    cdef uint64_t off
    while o + 4 <= n:
        code = u16(b + o, big)
        ln = u16(b + o + 2, big)
        if code == 0 or o + 4 + ln > n:
            return
        if code == 9 and ln >= 1:
            v = b[o + 4]
            if v & 0x80:
                i.pow2 = 1
                i.exponent = v & 0x7F
            elif v <= 18:  # 10 ** 18 units per second fits in int64
                i.pow2 = 0
                i.units = 1
                for k in range(v):
                    i.units *= 10
            else:
                i.pow2 = 1  # finer than attoseconds: as a (huge) float divisor
                i.exponent = <int>(v * 3.321928094887362)
        elif code == 14 and ln == 8:
            if big:
                off = (<uint64_t>u32(b + o + 4, big) << 32) | u32(b + o + 8, big)
            else:
                off = (<uint64_t>u32(b + o + 8, big) << 32) | u32(b + o + 4, big)
            i.offset_s = <int64_t>off
        o += 4 + ((ln + 3) & ~3)


cdef int scan_pcapng(Scan *s, Iface *ifaces) noexcept nogil:
    """pcapng: blocks from the section header at 0; the caller checked the first SHB."""
    cdef int64_t off = 0, blen, caplen, data
    cdef uint32_t btype, iface
    cdef uint64_t t
    cdef bint big = 0
    cdef int nif = 0, rc
    cdef Iface *i
    while off + 12 <= s.size:
        btype = u32(s.buf + off, big)
        if btype == 0x0A0D0D0A:  # a section header: its own byte order and interfaces
            if off + 28 > s.size:
                return OK
            if be32(s.buf + off + 8) == 0x1A2B3C4D:
                big = 1
            elif le32(s.buf + off + 8) == 0x1A2B3C4D:
                big = 0
            else:
                return OK  # damaged: keep what came before
            nif = 0
        blen = u32(s.buf + off + 4, big)
        if blen < 12 or blen > s.size - off:
            return OK  # cut short or damaged: keep what came before
        if btype == 1:  # interface description block
            if blen >= 20 and nif < MAX_IFACES:
                i = &ifaces[nif]
                i.linktype = u16(s.buf + off + 8, big)
                i.units = 1000000
                i.pow2 = 0
                i.exponent = 0
                i.offset_s = 0
                read_idb_options(s.buf + off + 16, blen - 20, big, i)
                nif += 1
        elif btype == 6 or btype == 2:  # enhanced packet block, obsolete packet block
            if blen < 32:
                return OK
            iface = u32(s.buf + off + 8, big) if btype == 6 else u16(s.buf + off + 8, big)
            t = (<uint64_t>u32(s.buf + off + 12, big) << 32) | u32(s.buf + off + 16, big)
            caplen = u32(s.buf + off + 20, big)
            data = blen - 32
            if caplen > data:
                caplen = data
            if iface >= <uint32_t>nif:
                s.skipped[S_UNKNOWN_IF] += 1
            else:
                rc = frame(s, ifaces[iface].linktype, off + 28, caplen,
                           ng_time_us(&ifaces[iface], t))
                if rc != OK:
                    return rc
        off += blen
    return OK


def scan(const uint8_t[::1] buf not None, int min_packets=1):
    """Every RTP flow of the capture in ``buf`` with at least ``min_packets`` packets.

    Returns ``(format, data, lengths, arrival_us, pt, ssrc, event_like, bounds, keys,
    skipped, datagrams)``: ``data`` holds the kept flows' packets back to back, flow
    after flow in first-seen order, each flow's in capture order; ``bounds``
    (int64[flows + 1]) delimits each flow's packets in the per-packet arrays
    (int32 lengths, int64 arrival microseconds, uint8 payload type, uint32 SSRC,
    bool event_like); ``keys`` is each flow's 40-byte key: IP version (4 or 6),
    source and destination address (16 bytes each, IPv4 in the first 4), source
    and destination port (big-endian); ``skipped`` counts frames by
    ``SKIP_REASONS``; ``datagrams`` counts UDP datagrams. Raises ValueError when
    ``buf`` is not a pcap or pcapng capture, UnsupportedLinkType(link type) at the
    first frame of a link type this reader does not parse, MemoryError.
    """
    cdef Scan s
    cdef int64_t size = buf.shape[0]
    cdef const uint8_t *b = &buf[0] if size else NULL
    cdef uint32_t magic
    cdef int rc = OK, kind = 0
    cdef bint big = 0, nano = 0
    cdef int64_t header = 16
    cdef Iface *ifaces = NULL
    if size < 4:
        raise ValueError("too short for a capture header")
    magic = be32(b)
    if magic in (0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34, 0xD4C3B2A1, 0x4D3CB2A1, 0x34CDB2A1):
        if size < 24:
            raise ValueError("pcap file header cut short")
        big = magic in (0xA1B2C3D4, 0xA1B23C4D, 0xA1B2CD34)
        nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
        header = 24 if magic in (0xA1B2CD34, 0x34CDB2A1) else 16
        kind = 1
    elif magic == 0x0A0D0D0A:
        if size < 28:
            raise ValueError("pcapng section header cut short")
        big = be32(b + 8) == 0x1A2B3C4D
        if not big and le32(b + 8) != 0x1A2B3C4D:
            raise ValueError("pcapng section header with an unknown byte-order magic")
        if u16(b + 12, big) != 1:
            raise ValueError(f"pcapng version {u16(b + 12, big)}.{u16(b + 14, big)} unknown")
        if u32(b + 4, big) > <uint64_t>size or u32(b + 4, big) < 28:
            raise ValueError("pcapng section header block cut short")
        kind = 2
    else:
        raise ValueError(f"unknown file magic {magic:#010x}")
    memset(&s, 0, sizeof(Scan))
    s.buf = b
    s.size = size
    s.bad_linktype = -1
    try:
        if kind == 2:
            ifaces = <Iface *>calloc(MAX_IFACES, sizeof(Iface))
            if ifaces == NULL:
                raise MemoryError()
        with nogil:
            if kind == 1:
                rc = scan_pcap(&s, big, nano, header)
            else:
                rc = scan_pcapng(&s, ifaces)
        if rc == E_NOMEM:
            raise MemoryError()
        if rc == E_LINKTYPE:
            raise UnsupportedLinkType(s.bad_linktype)
        return _collect(&s, min_packets, "pcap" if kind == 1 else "pcapng")
    finally:
        free(ifaces)
        free(s.pk)
        free(s.flows)
        free(s.table)


cdef object _collect(Scan *s, int min_packets, str fmt):
    """The kept flows' packets grouped by flow (a stable counting sort), as ``scan`` returns."""
    cdef int32_t f, k = 0, sl
    cdef int64_t i, j, n = 0, used = 0
    cdef int32_t *slot = <int32_t *>malloc((s.nflows + 1) * sizeof(int32_t))
    cdef int64_t *cursor = NULL
    cdef int64_t *order = NULL
    cdef char *out
    try:
        if slot == NULL:
            raise MemoryError()
        for f in range(s.nflows):  # kept flows get slots 0..k-1, in first-seen order
            if s.flows[f].packets >= min_packets:
                slot[f] = k
                k += 1
                n += s.flows[f].packets
            else:
                slot[f] = -1
        bounds_a = np.zeros(k + 1, dtype=np.int64)
        lengths_a = np.empty(n, dtype=np.int32)
        arrival_a = np.empty(n, dtype=np.int64)
        pt_a = np.empty(n, dtype=np.uint8)
        ssrc_a = np.empty(n, dtype=np.uint32)
        event_a = np.empty(n, dtype=np.uint8)
        keys = []
        for f in range(s.nflows):
            if slot[f] >= 0:
                keys.append(PyBytes_FromStringAndSize(<char *>s.flows[f].key, KEY))
        cursor = <int64_t *>malloc((k + 1) * sizeof(int64_t))
        order = <int64_t *>malloc((n + 1) * sizeof(int64_t))
        if cursor == NULL or order == NULL:
            raise MemoryError()
        _group(s, slot, k, cursor, order, bounds_a, lengths_a, arrival_a, pt_a, ssrc_a, event_a)
        used = int(lengths_a.sum(dtype=np.int64))
        data = PyBytes_FromStringAndSize(NULL, used)
        out = PyBytes_AS_STRING(data)
        with nogil:
            used = 0
            for j in range(n):
                i = order[j]
                memcpy(out + used, s.buf + s.pk[i].off, s.pk[i].length)
                used += s.pk[i].length
    finally:
        free(slot)
        free(cursor)
        free(order)
    skipped = {SKIP_REASONS[r]: int(s.skipped[r]) for r in range(N_REASONS) if s.skipped[r]}
    return (fmt, data, lengths_a, arrival_a, pt_a, ssrc_a, event_a.view(np.bool_), bounds_a,
            keys, skipped, int(s.datagrams))


cdef void _group(Scan *s, const int32_t *slot, int32_t k, int64_t *cursor, int64_t *order,
                 int64_t[::1] bounds, int32_t[::1] lengths, int64_t[::1] arrival,
                 uint8_t[::1] pt, uint32_t[::1] ssrc, uint8_t[::1] event):
    """Counting sort of the packets by kept flow; ``order[j]``: packet j's index in ``s.pk``."""
    cdef int32_t f, sl
    cdef int64_t i, j
    with nogil:
        for f in range(s.nflows):
            if slot[f] >= 0:
                bounds[slot[f] + 1] = s.flows[f].packets
        for sl in range(k):
            bounds[sl + 1] += bounds[sl]
            cursor[sl] = bounds[sl]
        for i in range(s.n):
            sl = slot[s.pk[i].flow]
            if sl < 0:
                continue
            j = cursor[sl]
            cursor[sl] += 1
            order[j] = i
            lengths[j] = s.pk[i].length
            arrival[j] = s.pk[i].arrival_us
            pt[j] = s.pk[i].pt
            ssrc[j] = s.pk[i].ssrc
            event[j] = s.pk[i].event_like
