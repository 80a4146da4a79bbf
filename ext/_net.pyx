# cython: language_level=3
"""Batch UDP receive and send for the sidecar (Linux recvmmsg / sendmmsg).

Batch in, batch out: one ``recv_batch`` call is one ``recvmmsg(2)`` with
MSG_DONTWAIT and the GIL released; it returns every datagram that was queued
(up to ``max_packets``) as ONE bytes object (the packets back to back, in
arrival order) plus an int32 array of their lengths and an int64 array of
their arrival instants (microseconds since the Unix epoch), the layout of an
``RtpBatch`` (docs/format.md section 2). No Python object is made per packet.

Arrival instants are the kernel's receive timestamps (SO_TIMESTAMPNS control
messages; ``enable_timestamps(fd)`` turns them on for a socket); a datagram
without one (timestamps not enabled) gets CLOCK_REALTIME read once when the
batch returns. (Linux switches timestamping on for the whole stack a moment
after the first socket asks, from a work queue; a datagram arriving before
then is stamped when it is read: keep one timestamping socket open, as the
sidecar does.) A datagram longer than ``max_size`` arrives truncated
(MSG_TRUNC): it is dropped from the batch and counted in ``truncated``.

``recv_batch_from`` is ``recv_batch`` plus each datagram's source address
(what the sidecar's source latching needs), again as ONE bytes object:
``SOURCE_SIZE`` (18) bytes per datagram, the 16-byte IPv6 address (an IPv4
source as its IPv4-mapped form ``::ffff:a.b.c.d``) then the 2-byte port,
big-endian.
"""
import numpy as np
cimport numpy as cnp
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset

cnp.import_array()

# ---------------------------------------------------------------------------
# C declarations (Linux, glibc)
# ---------------------------------------------------------------------------
cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len

cdef extern from "<time.h>" nogil:
    struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec *tp)
    int CLOCK_REALTIME

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    struct sockaddr_storage:
        sa_family_t ss_family
    int AF_INET
    int AF_INET6
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags)
    int setsockopt(int sockfd, int level, int optname, const void *optval, socklen_t optlen)
    cmsghdr *CMSG_FIRSTHDR(msghdr *msgh)
    cmsghdr *CMSG_NXTHDR(msghdr *msgh, cmsghdr *cmsg)
    unsigned char *CMSG_DATA(cmsghdr *cmsg)
    size_t CMSG_SPACE(size_t length)
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS
    int MSG_DONTWAIT
    int MSG_TRUNC

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr
    struct in6_addr:
        uint8_t s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        in6_addr sin6_addr

# ---------------------------------------------------------------------------

# Bytes per datagram in recv_batch_from's ``sources``: IPv6 address (16) + port (2).
SOURCE_SIZE = 18

# Room for one SCM_TIMESTAMPNS message (CMSG_SPACE(16) is 32 on 64-bit Linux),
# with slack for a second control message the kernel might add.
cdef enum:
    CONTROL_SIZE = 64
    # The largest batch one call takes (recvmmsg's vlen is bounded by UIO_MAXIOV).
    MAX_PACKETS = 1024
    SOURCE_BYTES = 18  # SOURCE_SIZE


cdef int64_t _now_us() nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


def now_us():
    """CLOCK_REALTIME in microseconds since the Unix epoch (the clock of ``arrival_us``)."""
    return _now_us()


def enable_timestamps(int fd):
    """Ask the kernel to stamp each datagram received on ``fd`` (SO_TIMESTAMPNS)."""
    cdef int one = 1
    if setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) != 0:
        raise OSError(errno, f"setsockopt(SO_TIMESTAMPNS) on fd {fd} failed")


def recv_batch(int fd, int max_packets=256, int max_size=2048):
    """Receive the datagrams queued on the non-blocking or blocking UDP socket ``fd``
    without waiting (MSG_DONTWAIT): at most ``max_packets`` (1 to 1024), each at most
    ``max_size`` bytes (1 to 65535).

    Returns ``(packets, lengths, arrival_us, truncated)``: the datagrams back to back
    in one bytes object, their lengths (int32 array), their arrival instants (int64
    array, microseconds since the Unix epoch) and how many datagrams were longer
    than ``max_size`` (dropped, not in the batch). Nothing queued: an empty batch.
    Raises OSError for a socket error other than EAGAIN/EINTR."""
    packets, lengths, arrival, truncated, _ = _recv(fd, max_packets, max_size, False)
    return packets, lengths, arrival, truncated


def recv_batch_from(int fd, int max_packets=256, int max_size=2048):
    """``recv_batch`` plus where each datagram came from: returns ``(packets, lengths,
    arrival_us, truncated, sources)``, ``sources`` holding ``SOURCE_SIZE`` bytes per
    kept datagram (16-byte IPv6 or IPv4-mapped address, 2-byte big-endian port)."""
    return _recv(fd, max_packets, max_size, True)


cdef tuple _recv(int fd, int max_packets, int max_size, bint want_sources):
    if not 1 <= max_packets <= MAX_PACKETS:
        raise ValueError(f"max_packets {max_packets}: must be 1 to {MAX_PACKETS}")
    if not 1 <= max_size <= 65535:
        raise ValueError(f"max_size {max_size}: must be 1 to 65535")
    cdef size_t slots = <size_t>max_packets
    cdef uint8_t *data = <uint8_t *>malloc(slots * <size_t>max_size)
    cdef uint8_t *control = <uint8_t *>malloc(slots * CONTROL_SIZE)
    cdef mmsghdr *msgs = <mmsghdr *>malloc(slots * sizeof(mmsghdr))
    cdef iovec *iov = <iovec *>malloc(slots * sizeof(iovec))
    cdef int32_t *lens = <int32_t *>malloc(slots * sizeof(int32_t))
    cdef int64_t *stamps = <int64_t *>malloc(slots * sizeof(int64_t))
    cdef sockaddr_storage *names = NULL
    cdef uint8_t *srcs = NULL
    if want_sources:
        names = <sockaddr_storage *>malloc(slots * sizeof(sockaddr_storage))
        srcs = <uint8_t *>malloc(slots * SOURCE_BYTES)
    if data == NULL or control == NULL or msgs == NULL or iov == NULL or lens == NULL \
            or stamps == NULL or (want_sources and (names == NULL or srcs == NULL)):
        free(data); free(control); free(msgs); free(iov); free(lens); free(stamps)
        free(names); free(srcs)
        raise MemoryError()
    cdef int n = 0, err = 0, i, kept = 0, truncated = 0
    cdef size_t total = 0
    cdef int64_t fallback
    cdef cmsghdr *c
    cdef timespec *ts
    cdef uint8_t *src
    cdef sockaddr_in *v4
    cdef sockaddr_in6 *v6
    try:
        with nogil:
            memset(msgs, 0, slots * sizeof(mmsghdr))
            for i in range(max_packets):
                iov[i].iov_base = data + <size_t>i * max_size
                iov[i].iov_len = max_size
                msgs[i].msg_hdr.msg_iov = &iov[i]
                msgs[i].msg_hdr.msg_iovlen = 1
                msgs[i].msg_hdr.msg_control = control + <size_t>i * CONTROL_SIZE
                msgs[i].msg_hdr.msg_controllen = CONTROL_SIZE
                if want_sources:
                    msgs[i].msg_hdr.msg_name = &names[i]
                    msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
            while True:
                n = recvmmsg(fd, msgs, max_packets, MSG_DONTWAIT, NULL)
                if n >= 0:
                    break
                err = errno
                if err != EINTR:
                    n = 0
                    break
                err = 0
            fallback = _now_us()
            # Compact: keep whole datagrams, drop truncated ones, in arrival order.
            for i in range(n):
                if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                    truncated += 1
                    continue
                lens[kept] = <int32_t>msgs[i].msg_len
                stamps[kept] = fallback
                c = CMSG_FIRSTHDR(&msgs[i].msg_hdr)
                while c != NULL:
                    if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                        ts = <timespec *>CMSG_DATA(c)
                        stamps[kept] = <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
                        break
                    c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)
                if want_sources:
                    src = srcs + <size_t>kept * SOURCE_BYTES
                    memset(src, 0, SOURCE_BYTES)
                    if names[i].ss_family == AF_INET6:
                        v6 = <sockaddr_in6 *>&names[i]
                        memcpy(src, v6.sin6_addr.s6_addr, 16)
                        memcpy(src + 16, &v6.sin6_port, 2)
                    elif names[i].ss_family == AF_INET:
                        v4 = <sockaddr_in *>&names[i]
                        src[10] = 0xFF
                        src[11] = 0xFF
                        memcpy(src + 12, &v4.sin_addr.s_addr, 4)
                        memcpy(src + 16, &v4.sin_port, 2)
                if total != <size_t>i * max_size:
                    memmove(data + total, data + <size_t>i * max_size, msgs[i].msg_len)
                total += msgs[i].msg_len
                kept += 1
        if err != 0 and err != EAGAIN:
            raise OSError(err, f"recvmmsg on fd {fd} failed")
        packets = PyBytes_FromStringAndSize(<char *>data, total)
        lengths = np.empty(kept, dtype=np.int32)
        arrival = np.empty(kept, dtype=np.int64)
        if kept:
            memcpy(cnp.PyArray_DATA(lengths), lens, kept * sizeof(int32_t))
            memcpy(cnp.PyArray_DATA(arrival), stamps, kept * sizeof(int64_t))
        sources = PyBytes_FromStringAndSize(<char *>srcs, kept * SOURCE_BYTES) \
            if want_sources else None
        return packets, lengths, arrival, truncated, sources
    finally:
        free(data); free(control); free(msgs); free(iov); free(lens); free(stamps)
        free(names); free(srcs)


def send_batch(int fd, const uint8_t[::1] packets not None, const int32_t[::1] lengths not None):
    """Send ``packets`` (datagrams back to back, ``lengths`` each) on the connected UDP
    socket ``fd`` with sendmmsg, GIL released. Returns how many datagrams were sent
    (fewer than given when the socket buffer fills on a non-blocking socket)."""
    cdef Py_ssize_t count = lengths.shape[0], i
    cdef size_t off = 0, size = <size_t>packets.shape[0]
    for i in range(count):
        if lengths[i] < 0:
            raise ValueError(f"lengths[{i}] is negative")
        off += <size_t>lengths[i]
    if off != size:
        raise ValueError(f"sum(lengths) {off} != len(packets) {size}")
    if count == 0:
        return 0
    cdef mmsghdr *msgs = <mmsghdr *>malloc(count * sizeof(mmsghdr))
    cdef iovec *iov = <iovec *>malloc(count * sizeof(iovec))
    if msgs == NULL or iov == NULL:
        free(msgs); free(iov)
        raise MemoryError()
    cdef int sent = 0, r = 0, err = 0
    cdef const uint8_t *base = &packets[0] if size else NULL
    try:
        with nogil:
            memset(msgs, 0, count * sizeof(mmsghdr))
            off = 0
            for i in range(count):
                iov[i].iov_base = <void *>(base + off)
                iov[i].iov_len = <size_t>lengths[i]
                msgs[i].msg_hdr.msg_iov = &iov[i]
                msgs[i].msg_hdr.msg_iovlen = 1
                off += <size_t>lengths[i]
            while sent < count:
                r = sendmmsg(fd, msgs + sent, <unsigned int>min(count - sent, MAX_PACKETS), 0)
                if r < 0:
                    err = errno
                    if err == EINTR:
                        err = 0
                        continue
                    break
                sent += r
        if err != 0 and err != EAGAIN:
            raise OSError(err, f"sendmmsg on fd {fd} failed")
        return sent
    finally:
        free(msgs); free(iov)


# ---------------------------------------------------------------------------
# Many sockets in one call: the sidecar's tick
# ---------------------------------------------------------------------------

cdef enum:
    GROW_PACKETS = 1024  # first capacity of the output arrays (doubled as needed)


cdef class MultiRecv:
    """Drain many UDP sockets in one call (the sidecar's receive tick): for each fd in
    turn, ``recvmmsg(2)`` (MSG_DONTWAIT, kernel arrival stamps, sources) until the
    socket is empty, all with the GIL released, into buffers this object keeps between
    calls (no allocation per call once warm). No Python object is made per packet.

    ``recv(fds, latched, latched_source, latched_ssrc, max_rounds)`` returns
    ``(packets, lengths, arrival_us, sources, counts, truncated, errors, mine)``:

    - ``packets`` (bytes, back to back), ``lengths`` (int32), ``arrival_us`` (int64,
      the kernel's SO_TIMESTAMPNS stamp, else CLOCK_REALTIME when the recvmmsg that
      read it returned) and ``sources`` (``SOURCE_SIZE`` bytes each) of every datagram
      read, fd after fd in the order of ``fds``, each fd's in arrival order, exactly
      as ``recv_batch_from`` gives them;
    - ``counts[i]``: how many of them came from ``fds[i]`` (so fd ``i``'s datagrams
      are the ``counts[i]`` after those of ``fds[:i]``); ``truncated[i]``: datagrams
      longer than ``max_size`` read from it (dropped, as ``recv_batch`` drops them);
      ``errors[i]``: the errno of a failed recvmmsg on it (0 if none; its datagrams
      read before the error are kept);
    - ``mine``: per datagram, whether ``latched[i]`` is set for its fd and the
      datagram comes from ``latched_source[18 i : 18 i + 18]`` with RTP SSRC (bytes 8
      to 11, big-endian; the datagram needs 12 bytes or more) ``latched_ssrc[i]``: the
      source-latch fast path's test, no validity check (that is
      ``callvault._rtp.check_datagrams``).

    Each fd is read at most ``max_rounds`` recvmmsg calls of ``slots`` datagrams per
    call (a socket flooded faster than it is read cannot hold the tick forever;
    what is left is read at the next one); ``max_rounds`` <= 0 reads until empty."""

    cdef int slots
    cdef int max_size
    cdef uint8_t *slot_data
    cdef uint8_t *control
    cdef mmsghdr *msgs
    cdef iovec *iov
    cdef sockaddr_storage *names
    # outputs, grown by doubling, kept between calls
    cdef uint8_t *out
    cdef size_t out_cap
    cdef int32_t *lens
    cdef int64_t *stamps
    cdef uint8_t *srcs
    cdef uint8_t *mine
    cdef size_t pk_cap

    def __cinit__(self, int slots=256, int max_size=65535):
        if not 1 <= slots <= MAX_PACKETS:
            raise ValueError(f"slots {slots}: must be 1 to {MAX_PACKETS}")
        if not 1 <= max_size <= 65535:
            raise ValueError(f"max_size {max_size}: must be 1 to 65535")
        self.slots = slots
        self.max_size = max_size
        # slots x max_size bytes of address space; the kernel backs only the pages
        # datagrams are written to (a slot's first page for small RTP packets)
        self.slot_data = <uint8_t *>malloc(<size_t>slots * <size_t>max_size)
        self.control = <uint8_t *>malloc(<size_t>slots * CONTROL_SIZE)
        self.msgs = <mmsghdr *>malloc(<size_t>slots * sizeof(mmsghdr))
        self.iov = <iovec *>malloc(<size_t>slots * sizeof(iovec))
        self.names = <sockaddr_storage *>malloc(<size_t>slots * sizeof(sockaddr_storage))
        self.out_cap = GROW_PACKETS * 256
        self.pk_cap = GROW_PACKETS
        self.out = <uint8_t *>malloc(self.out_cap)
        self.lens = <int32_t *>malloc(self.pk_cap * sizeof(int32_t))
        self.stamps = <int64_t *>malloc(self.pk_cap * sizeof(int64_t))
        self.srcs = <uint8_t *>malloc(self.pk_cap * SOURCE_BYTES)
        self.mine = <uint8_t *>malloc(self.pk_cap)
        if self.slot_data == NULL or self.control == NULL or self.msgs == NULL \
                or self.iov == NULL or self.names == NULL or self.out == NULL \
                or self.lens == NULL or self.stamps == NULL or self.srcs == NULL \
                or self.mine == NULL:
            raise MemoryError()
        cdef int i
        memset(self.msgs, 0, <size_t>slots * sizeof(mmsghdr))
        for i in range(slots):
            self.iov[i].iov_base = self.slot_data + <size_t>i * max_size
            self.iov[i].iov_len = max_size
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.msgs[i].msg_hdr.msg_control = self.control + <size_t>i * CONTROL_SIZE
            self.msgs[i].msg_hdr.msg_controllen = CONTROL_SIZE
            self.msgs[i].msg_hdr.msg_name = &self.names[i]
            self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)

    def __dealloc__(self):
        free(self.slot_data); free(self.control); free(self.msgs); free(self.iov)
        free(self.names); free(self.out); free(self.lens); free(self.stamps)
        free(self.srcs); free(self.mine)

    cdef bint _grow_packets(self, size_t need) noexcept nogil:
        cdef size_t cap = self.pk_cap
        while cap < need:
            cap *= 2
        if cap == self.pk_cap:
            return True
        cdef int32_t *lens = <int32_t *>realloc(self.lens, cap * sizeof(int32_t))
        if lens == NULL:
            return False
        self.lens = lens
        cdef int64_t *stamps = <int64_t *>realloc(self.stamps, cap * sizeof(int64_t))
        if stamps == NULL:
            return False
        self.stamps = stamps
        cdef uint8_t *srcs = <uint8_t *>realloc(self.srcs, cap * SOURCE_BYTES)
        if srcs == NULL:
            return False
        self.srcs = srcs
        cdef uint8_t *mine = <uint8_t *>realloc(self.mine, cap)
        if mine == NULL:
            return False
        self.mine = mine
        self.pk_cap = cap
        return True

    cdef bint _grow_out(self, size_t need) noexcept nogil:
        cdef size_t cap = self.out_cap
        while cap < need:
            cap *= 2
        if cap == self.out_cap:
            return True
        cdef uint8_t *out = <uint8_t *>realloc(self.out, cap)
        if out == NULL:
            return False
        self.out = out
        self.out_cap = cap
        return True

    def recv(self, const int32_t[::1] fds not None, const uint8_t[::1] latched not None,
             const uint8_t[::1] latched_source not None,
             const uint32_t[::1] latched_ssrc not None, int max_rounds=0):
        cdef Py_ssize_t nfds = fds.shape[0]
        if latched.shape[0] != nfds or latched_ssrc.shape[0] != nfds \
                or latched_source.shape[0] != nfds * SOURCE_BYTES:
            raise ValueError("latched, latched_source and latched_ssrc need one entry per fd")
        counts = np.zeros(nfds, dtype=np.int32)
        truncs = np.zeros(nfds, dtype=np.int32)
        errs = np.zeros(nfds, dtype=np.int32)
        cdef int32_t[::1] cv = counts
        cdef int32_t[::1] tv = truncs
        cdef int32_t[::1] ev = errs
        cdef size_t npk = 0, total = 0, base
        cdef Py_ssize_t f
        cdef int fd, n, i, err, rounds, slots = self.slots, max_size = self.max_size
        cdef int64_t now
        cdef cmsghdr *c
        cdef timespec *ts
        cdef uint8_t *src
        cdef const uint8_t *want
        cdef const uint8_t *pkt
        cdef uint32_t ssrc
        cdef sockaddr_in *v4
        cdef sockaddr_in6 *v6
        cdef bint oom = False
        cdef unsigned int ln
        with nogil:
            for f in range(nfds):
                fd = fds[f]
                rounds = 0
                while max_rounds <= 0 or rounds < max_rounds:
                    rounds += 1
                    n = recvmmsg(fd, self.msgs, slots, MSG_DONTWAIT, NULL)
                    if n < 0:
                        err = errno
                        if err == EINTR:
                            continue
                        if err != EAGAIN:
                            ev[f] = err
                        break
                    now = _now_us()
                    if not self._grow_packets(npk + <size_t>n):
                        oom = True
                        break
                    for i in range(n):
                        if self.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                            tv[f] += 1
                            continue
                        ln = self.msgs[i].msg_len
                        if not self._grow_out(total + ln):
                            oom = True
                            break
                        self.lens[npk] = <int32_t>ln
                        self.stamps[npk] = now
                        c = CMSG_FIRSTHDR(&self.msgs[i].msg_hdr)
                        while c != NULL:
                            if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
                                ts = <timespec *>CMSG_DATA(c)
                                self.stamps[npk] = <int64_t>ts.tv_sec * 1000000 + ts.tv_nsec // 1000
                                break
                            c = CMSG_NXTHDR(&self.msgs[i].msg_hdr, c)
                        src = self.srcs + npk * SOURCE_BYTES
                        memset(src, 0, SOURCE_BYTES)
                        if self.names[i].ss_family == AF_INET6:
                            v6 = <sockaddr_in6 *>&self.names[i]
                            memcpy(src, v6.sin6_addr.s6_addr, 16)
                            memcpy(src + 16, &v6.sin6_port, 2)
                        elif self.names[i].ss_family == AF_INET:
                            v4 = <sockaddr_in *>&self.names[i]
                            src[10] = 0xFF
                            src[11] = 0xFF
                            memcpy(src + 12, &v4.sin_addr.s_addr, 4)
                            memcpy(src + 16, &v4.sin_port, 2)
                        pkt = self.slot_data + <size_t>i * max_size
                        memcpy(self.out + total, pkt, ln)
                        self.mine[npk] = 0
                        if latched[f] and ln >= 12:
                            want = &latched_source[f * SOURCE_BYTES]
                            ssrc = ((<uint32_t>pkt[8] << 24) | (<uint32_t>pkt[9] << 16)
                                    | (<uint32_t>pkt[10] << 8) | <uint32_t>pkt[11])
                            self.mine[npk] = ssrc == latched_ssrc[f] \
                                and memcmp(src, want, SOURCE_BYTES) == 0
                        total += ln
                        npk += 1
                        cv[f] += 1
                    # what recvmmsg wrote into the headers it used, back for the next
                    for i in range(n):
                        self.msgs[i].msg_hdr.msg_controllen = CONTROL_SIZE
                        self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
                        self.msgs[i].msg_hdr.msg_flags = 0
                    if oom or n < slots:
                        break
                if oom:
                    break
        if oom:
            raise MemoryError("MultiRecv could not grow its buffers")
        packets = PyBytes_FromStringAndSize(<char *>self.out, total)
        lengths = np.empty(npk, dtype=np.int32)
        arrival = np.empty(npk, dtype=np.int64)
        mine = np.empty(npk, dtype=np.bool_)
        if npk:
            memcpy(cnp.PyArray_DATA(lengths), self.lens, npk * sizeof(int32_t))
            memcpy(cnp.PyArray_DATA(arrival), self.stamps, npk * sizeof(int64_t))
            memcpy(cnp.PyArray_DATA(mine), self.mine, npk)
        sources = PyBytes_FromStringAndSize(<char *>self.srcs, npk * SOURCE_BYTES)
        return packets, lengths, arrival, sources, counts, truncs, errs, mine
