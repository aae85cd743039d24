"""The worker registry: each worker process's row (host, pid, boot, model loads,
heartbeat), which ``GET /api/v1/queue`` shows and the rescue of dead workers reads."""


from datetime import datetime

from sqlalchemy import insert, update

from db.transitions import Transitions, W, utcnow


class WorkerRegistry(Transitions):
    async def register(self, worker_id: str, hostname: str, pid: int, *,
                       boot_id: str | None = None, model: str | None = None,
                       now: datetime | None = None) -> None:
        now = now or utcnow()
        row = {"id": worker_id, "hostname": hostname, "pid": pid, "boot_id": boot_id,
               "started_at": now, "heartbeat_at": now, "stopped_at": None, "model": model,
               "model_loaded_at": None, "model_loads": 0, "current_task_id": None}
        await self._tx(lambda conn: conn.execute(insert(W), [row]))

    async def record_model_load(self, worker_id: str, model: str, *,
                                now: datetime | None = None) -> int:
        now = now or utcnow()
        stmt = (update(W).where(W.c.id == worker_id)
                .values(model=model, model_loaded_at=now, model_loads=W.c.model_loads + 1,
                        heartbeat_at=now)
                .returning(W.c.model_loads))
        row = await self._tx(lambda conn: conn.execute(stmt).one())
        return int(row.model_loads)

    async def stop(self, worker_id: str, *, now: datetime | None = None) -> None:
        now = now or utcnow()
        stmt = (update(W).where(W.c.id == worker_id)
                .values(stopped_at=now, heartbeat_at=now, current_task_id=None))
        await self._tx(lambda conn: conn.execute(stmt))
