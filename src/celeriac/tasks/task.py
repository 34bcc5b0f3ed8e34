"""``Task[P, R]``: a registered function that can be called here or sent to a worker.

The decorator keeps the function's parameters (``P``) and return type (``R``) for type checkers:
``add.delay("x", [])`` on ``def add(x: int, y: int) -> int`` is a type error, and
``add.delay(1, 2).get()`` is an ``int``.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from celeriac.exceptions import InvalidTaskArguments, Retry
from celeriac.tasks.context import Request, current_request

if TYPE_CHECKING:
    from celeriac.app import Celeriac
    from celeriac.canvas.signature import Signature
    from celeriac.result import AsyncResult, EagerResult

P = ParamSpec("P")
R = TypeVar("R")

_EMPTY_REQUEST = Request()


class Task(Generic[P, R]):
    """A task: call it to run it here, ``delay()``/``apply_async()`` to send it to a worker."""

    # Options a task accepts from the decorator; None means "use the app's setting".
    queue: str | None = None
    ignore_result: bool | None = None
    acks_late: bool | None = None
    serializer: str | None = None
    compression: str | None = None
    priority: int | None = None
    max_retries: int | None = None
    default_retry_delay: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: At most this many runs per worker ("10/s", "100/m"), as in Celery.
    rate_limit: str | None = None
    #: At most this many runs across all workers, where the broker can share a limit.
    global_rate_limit: str | None = None
    expires: float | None = None
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_kwargs: dict[str, Any] | None = None
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600
    retry_jitter: bool = True
    track_started: bool | None = None
    typing: bool = True
    shadow: str | None = None

    def __init__(
        self,
        app: Celeriac,
        fun: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        **options: Any,
    ) -> None:
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        self.app = app
        self.fun = fun
        self.name = name
        self.bind = bind
        self.__name__ = getattr(fun, "__name__", name)
        self.__doc__ = fun.__doc__
        self.__module__ = fun.__module__
        self.__wrapped__ = fun
        for key, value in options.items():
            setattr(self, key, tuple(value) if key.endswith("retry_for") else value)
        self.is_coroutine = inspect.iscoroutinefunction(fun)
        self._signature: inspect.Signature | None = None
        #: names and required count when every parameter is plain (see _simple_parameters)
        self._simple: tuple[tuple[str, ...], int] | None = None

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.bind:
            return self.fun(self, *args, **kwargs)  # type: ignore[no-any-return]
        return self.fun(*args, **kwargs)  # type: ignore[no-any-return]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`InvalidTaskArguments` when the arguments do not fit the signature."""
        if not self.typing:
            return
        if self._signature is None:
            sig = inspect.signature(self.fun)
            if self.bind:
                params = list(sig.parameters.values())[1:]
                sig = sig.replace(parameters=params)
            self._signature = sig
            self._simple = _simple_parameters(sig)
        if self._simple is not None and _fits(self._simple, args, kwargs):
            return  # what bind() would accept, in a fraction of its 3-4 us
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidTaskArguments(f"{self.name}{self._signature}: {exc}") from None

    @property
    def request(self) -> Request:
        """The request of the current execution of this task (an empty one outside tasks)."""
        req = current_request()
        return req if req is not None and req.task == self.name else _EMPTY_REQUEST

    # -- sending -------------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send the task to a worker with these arguments."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """Send the task with options: ``countdown``, ``eta``, ``expires``, ``queue``,
        ``priority``, ``task_id``, ``headers``, ``link``, ``link_error``, ``serializer``, ...
        """
        args = tuple(args or ())
        kwargs = dict(kwargs or {})
        self.check_arguments(args, kwargs)
        if self.app.conf.task_always_eager:
            # As a signature, so link/link_error callbacks run here too.
            return self.signature(args, kwargs, **options).apply()
        return self.app.send_task(self.name, args, kwargs, _task=self, **options)

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """:meth:`delay` once the current Django transaction commits (Celery 5.4's; without
        Django it sends at once: see :mod:`celeriac.transactional`)."""
        from celeriac.transactional import on_commit

        self.check_arguments(args, kwargs)
        on_commit(lambda: self.delay(*args, **kwargs))

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """:meth:`apply_async` once the current Django transaction commits (as
        :meth:`delay_on_commit`)."""
        from celeriac.transactional import on_commit

        self.check_arguments(tuple(args or ()), dict(kwargs or {}))
        on_commit(lambda: self.apply_async(args, kwargs, **options))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay()`` for async code: the publish runs in a thread, the loop never blocks."""
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[R]:
        """``apply_async()`` for async code (same options)."""
        import asyncio
        import functools

        call = functools.partial(self.apply_async, args, kwargs, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        throw: bool | None = None,
        **options: Any,
    ) -> EagerResult[R]:
        """Run the task here, now, as a worker would (see :mod:`celeriac.worker.eager`), and
        wrap the outcome in an :class:`EagerResult`. ``throw`` (default
        ``task_eager_propagates``) re-raises what the task raised."""
        from celeriac.result import AsyncResult
        from celeriac.worker.eager import eager_scope, run_eagerly

        with eager_scope():
            publication = self.app.prepare_message(
                self.name, args, kwargs, task_id=task_id, retries=retries, _task=self, **options
            )
        task_id = publication.message.task_id or ""
        handle: AsyncResult[Any] = AsyncResult(task_id, self.app, task_name=self.name)
        result = run_eagerly(self.app, [publication], handle, throw=throw)
        return result  # type: ignore[return-value]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task with partial arguments."""
        return self.app.signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: callbacks do not prepend a parent's result."""
        return self.app.signature(self.name, args, kwargs, immutable=True)

    def map(self, it: Any) -> Signature:
        """One task that calls this task on every item of ``it``."""
        return self.app.signature("celery.map", (dict(self.s()), list(it)))

    def starmap(self, it: Any) -> Signature:
        """One task that calls this task with each item of ``it`` as its arguments."""
        return self.app.signature("celery.starmap", (dict(self.s()), [list(i) for i in it]))

    def chunks(self, it: Any, n: int) -> Signature:
        """A group of tasks, each calling this task on ``n`` items of ``it`` (as arguments)."""
        from celeriac.canvas.signature import group

        items = [list(i) for i in it]
        parts = [self.starmap(items[i : i + n]) for i in range(0, len(items), n)]
        return group(parts, app=self.app)

    def signature(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        return self.app.signature(self.name, args or (), kwargs or {}, options=options)

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        return self.app.AsyncResult(task_id, task_name=self.name)

    # -- retrying ------------------------------------------------------------------------------
    def retry(
        self,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        countdown: float | None = None,
        eta: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Ask for this task to run again later (a new message; the worker is not blocked).

        Raises :class:`Retry` (or ``exc`` when retries are exhausted); call it as
        ``raise self.retry(exc=exc)``.
        """
        req = self.request
        limit = max_retries if max_retries is not None else self.effective_max_retries()
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            from celeriac.exceptions import CeleriacError

            raise CeleriacError(f"{self.name}[{req.id}]: can't retry, max_retries={limit} reached")
        if countdown is None and eta is None:
            countdown = self.effective_retry_delay()
        retry = Retry(
            exc=exc, when=countdown, eta=eta, new_args=args, new_kwargs=kwargs, options=options
        )
        if throw:
            raise retry
        return retry

    def effective_max_retries(self) -> int | None:
        if self.max_retries is not None:
            return int(self.max_retries)
        return self.app.conf.task_max_retries

    def effective_retry_delay(self) -> float:
        if self.default_retry_delay is not None:
            return float(self.default_retry_delay)
        return float(self.app.conf.task_default_retry_delay)

    def autoretry_countdown(self, retries: int) -> float:
        """Delay before automatic retry number ``retries + 1``."""
        if not self.retry_backoff:
            kwargs = self.retry_kwargs or {}
            return float(kwargs.get("countdown", self.effective_retry_delay()))
        factor = 1 if self.retry_backoff is True else float(self.retry_backoff)
        delay = min(float(self.retry_backoff_max), factor * (2**retries))
        if self.retry_jitter:
            delay = random.uniform(0, delay)
        return float(delay)

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"


_OPTION_NAMES = frozenset(
    name for name in Task.__annotations__ if not name.startswith("_") and name != "OPTIONS"
)


def _simple_parameters(sig: inspect.Signature) -> tuple[tuple[str, ...], int] | None:
    """(names, how many are required) when every parameter is positional-or-keyword and the
    required ones come first; None otherwise (``bind`` decides every call)."""
    names: list[str] = []
    required = 0
    for param in sig.parameters.values():
        if param.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            return None
        if param.default is inspect.Parameter.empty:
            if required != len(names):
                return None
            required += 1
        names.append(param.name)
    return tuple(names), required


def _fits(simple: tuple[tuple[str, ...], int], args: Any, kwargs: dict[str, Any]) -> bool:
    """Whether ``bind`` surely accepts these arguments; False sends the call to ``bind``."""
    names, required = simple
    given = len(args)
    if given > len(names):
        return False
    if not kwargs:
        return given >= required
    positional = names[:given]
    for key in kwargs:
        if key not in names or key in positional:
            return False
    return all(name in kwargs for name in names[given:required])
