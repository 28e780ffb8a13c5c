"""A trio face for qemu.qmp, which speaks asyncio only.

The QMP client lives in an asyncio loop on a thread of its own; trio code awaits
each command through a trio Event set from that loop, so no trio thread waits
on a command and the rest of repofs stays pure trio.
"""

import asyncio
import threading

import trio
from qemu.qmp import ExecuteError, QMPClient

from repofs import errors

COMMAND_TIMEOUT_S = 60


class QmpConnection:
    def __init__(self, name: str):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"qmp-{name}", daemon=True
        )
        self._thread.start()
        self._client = QMPClient(name)

    async def _call(self, coro, timeout: float):
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        try:
            with trio.fail_after(timeout):
                await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    async def connect(self, socket_path: str, timeout: float = 10) -> None:
        await self._call(self._client.connect(socket_path), timeout)

    async def execute(
        self, command: str, arguments: dict | None = None, timeout: float = COMMAND_TIMEOUT_S
    ):
        try:
            return await self._call(self._client.execute(command, arguments), timeout)
        except ExecuteError as exc:
            raise errors.io_error(f"QMP {command} failed: {exc.error.error.desc}") from None

    async def close(self) -> None:
        """Disconnects and ends the loop thread; safe after the peer died."""
        try:
            await self._call(self._client.disconnect(), timeout=5)
        except Exception:  # noqa: BLE001 - the daemon may be gone; nothing to tell it
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        await trio.to_thread.run_sync(self._thread.join, 5)
        self._loop.close()
