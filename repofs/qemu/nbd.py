"""A minimal asynchronous NBD client for trio: one connection, many requests in flight.

repofs reaches qcow2 chains through the NBD server of its qemu-storage-daemon.
No NBD client library speaks trio, and libnbd's Python binding exists only for
Debian's system interpreter, so this module implements the small part of the
protocol (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)
that repofs needs: fixed newstyle handshake with NBD_OPT_GO, then simple replies
to READ, WRITE, FLUSH and DISC. A reader task matches replies to requests by
cookie, so any number of handlers can await their requests concurrently.
"""

import errno
import itertools
import struct

import trio

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
REP_ERROR_BIT = 1 << 31

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
_OPT_REPLY = struct.Struct(">QIII")


class NbdError(OSError):
    pass


class NbdConnection:
    def __init__(self, sock: trio.socket.SocketType, size: int):
        self.size = size
        self._sock = sock
        self._send_lock = trio.Lock()
        self._cookies = itertools.count(1)
        # cookie -> [event, buffer to fill or None, error]
        self._pending: dict[int, list] = {}
        self._failure: NbdError | None = None

    @classmethod
    async def connect(cls, nursery: trio.Nursery, socket_path: str, export: str) -> "NbdConnection":
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(socket_path)
            size = await _handshake(sock, export)
        except BaseException:
            sock.close()
            raise
        conn = cls(sock, size)
        nursery.start_soon(conn._read_replies)
        return conn

    async def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        await self._request(CMD_READ, offset, length, b"", buf)
        return bytes(buf)

    async def pwrite(self, offset: int, data: bytes) -> None:
        await self._request(CMD_WRITE, offset, len(data), data, None)

    async def flush(self) -> None:
        await self._request(CMD_FLUSH, 0, 0, b"", None)

    async def close(self) -> None:
        """Tells the server goodbye (it then closes, ending the reader task)."""
        if self._failure is None:
            try:
                async with self._send_lock:
                    await self._sock.send(_REQUEST.pack(REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
            except OSError:
                pass
        self._fail(NbdError(errno.ESHUTDOWN, "NBD connection closed"))
        self._sock.close()

    @property
    def alive(self) -> bool:
        return self._failure is None

    async def _request(self, command: int, offset: int, length: int, data: bytes, buf) -> None:
        if self._failure is not None:
            raise self._failure
        cookie = next(self._cookies)
        slot = [trio.Event(), buf, None]
        self._pending[cookie] = slot
        header = _REQUEST.pack(REQUEST_MAGIC, 0, command, cookie, offset, length)
        try:
            async with self._send_lock:
                await _send_all(self._sock, header + data if data else header)
        except OSError as exc:
            self._fail(NbdError(errno.EIO, f"NBD send failed: {exc}"))
        await slot[0].wait()
        if slot[2] is not None:
            raise slot[2]

    def _fail(self, error: NbdError) -> None:
        if self._failure is None:
            self._failure = error
        for slot in self._pending.values():
            slot[2] = slot[2] or error
            slot[0].set()
        self._pending.clear()

    async def _read_replies(self) -> None:
        header = bytearray(_REPLY.size)
        try:
            while True:
                await _recv_into(self._sock, memoryview(header))
                magic, error, cookie = _REPLY.unpack(header)
                if magic != SIMPLE_REPLY_MAGIC:
                    raise NbdError(errno.EIO, f"bad NBD reply magic {magic:#x}")
                slot = self._pending.pop(cookie)
                if error:
                    slot[2] = NbdError(error, f"NBD server: {errno.errorcode.get(error, error)}")
                elif slot[1] is not None:
                    await _recv_into(self._sock, memoryview(slot[1]))
                slot[0].set()
        except (OSError, EOFError, KeyError, trio.ClosedResourceError) as exc:
            self._fail(NbdError(errno.EIO, f"NBD connection lost: {exc!r}"))


async def _send_all(sock, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _recv_into(sock, view: memoryview) -> None:
    while view:
        n = await sock.recv_into(view)
        if n == 0:
            raise EOFError("NBD server closed the connection")
        view = view[n:]


async def _recv_exactly(sock, n: int) -> bytes:
    buf = bytearray(n)
    await _recv_into(sock, memoryview(buf))
    return bytes(buf)


async def _handshake(sock, export: str) -> int:
    """Fixed newstyle negotiation with NBD_OPT_GO; returns the export size."""
    greeting = await _recv_exactly(sock, 18)
    if greeting[:8] != NBDMAGIC or greeting[8:16] != IHAVEOPT:
        raise NbdError(errno.EPROTO, "not an NBD newstyle server")
    (server_flags,) = struct.unpack(">H", greeting[16:])
    if not server_flags & FLAG_FIXED_NEWSTYLE:
        raise NbdError(errno.EPROTO, "NBD server lacks fixed newstyle negotiation")
    client_flags = FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES)
    name = export.encode()
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    await _send_all(
        sock,
        struct.pack(">I", client_flags)
        + IHAVEOPT
        + struct.pack(">II", OPT_GO, len(payload))
        + payload,
    )
    size = None
    while True:
        magic, _opt, reply, length = _OPT_REPLY.unpack(await _recv_exactly(sock, _OPT_REPLY.size))
        data = await _recv_exactly(sock, length) if length else b""
        if magic != OPT_REPLY_MAGIC:
            raise NbdError(errno.EPROTO, "bad NBD option reply")
        if reply & REP_ERROR_BIT:
            message = data.decode(errors="replace")
            raise NbdError(errno.ENOENT, f"NBD export {export!r} refused: {message}")
        if reply == REP_INFO and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
            size = struct.unpack(">Q", data[2:10])[0]
        elif reply == REP_ACK:
            if size is None:
                raise NbdError(errno.EPROTO, "NBD server sent no export size")
            return size
