"""One parallel driver for every Numba kernel: tasks as C callbacks, run on Numba's pool.

A ``@njit(parallel=True)`` function compiles through Numba's parfor pipeline, and every function
it calls is linked into it and optimised again: measured on this machine, the direct
convolution's driver took 4.1 s to compile on top of its three (already compiled) loops, where a
C callback calling the same three took 1.0 s. With the cold compile of all kernels held under
30 s, each kernel that ran in parallel had cost 1-3 s of that budget.

So each parallel kernel is a *job*: a ``@cfunc`` with the C signature
``void job(int task, int64 block, int tasks)`` that does task ``task`` of ``tasks``, reading its
arguments from ``block``, the address of an int64 vector: array addresses and lengths
(:func:`put_vector`), and integers. A small jitted *launcher* per kernel fills the block and
hands it with the job's address to the single ``prange`` driver, which calls the job once per
task (:func:`launch`). The driver is a C function too, called through its address
(:func:`driver_address`), so that no launcher links its parallel code in. OpenBLAS's parallel
sections run through the same loop (:func:`run_tasks`, :mod:`refnas.kernels.numba_blas`); a
job can also run its tasks one after the other in the calling thread (:func:`launch_serially`).

Inside a job, :func:`vector` turns an (address, length) pair back into a 1-D array. The arrays
are the launcher's arguments, alive while the tasks run; its signature fixes their dtypes and
C-contiguity, which the job cannot check.
"""
from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.core.compiler_lock import global_compiler_lock
from numba.extending import intrinsic

# void job(int task, void *block, int tasks): pointers travel as 64-bit integers
JOB = types.void(types.intc, types.intp, types.intc)
# void drive(void *job, int count, size_t size, void *data, int extra)
_DRIVER = types.void(types.intp, types.intc, types.intp, types.intp, types.intc)


@intrinsic
def call_job(typingctx, function, thread, data, extra):
    """Call the C function at address ``function`` as ``void f(int, void *, int)`` (a job's
    task; also from inside another job, which then runs it in its own thread)."""
    signature = types.void(types.intp, types.intc, types.intp, types.intc)

    def codegen(context, builder, sig, args):
        pointer = ir.IntType(8).as_pointer()
        job_type = ir.FunctionType(ir.VoidType(), [ir.IntType(32), pointer, ir.IntType(32)])
        job = builder.inttoptr(args[0], job_type.as_pointer())
        builder.call(job, [args[1], builder.inttoptr(args[2], pointer), args[3]])
        return context.get_dummy_value()

    return signature, codegen


@njit(parallel=True, nogil=True, cache=True)
def run_tasks(function, count, size, data, extra):
    """Call the C function at address ``function`` for tasks 0..count-1, task i as
    ``function(i, data + i*size, extra)``, spread over Numba's pool by a ``prange``."""
    for i in prange(count):
        call_job(function, np.intc(i), data + i * size, extra)


@intrinsic
def _pointer(typingctx, address, dtype):
    """The int64 ``address`` as a pointer to ``dtype`` values."""
    pointer = types.CPointer(dtype.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(pointer))

    return pointer(address, dtype), codegen


@njit(inline="always")
def vector(block, at, dtype):
    """The 1-D array whose (address, length) are ``block[at]``, ``block[at + 1]``."""
    return carray(_pointer(block[at], dtype), (block[at + 1],))


@njit(inline="always")
def block_of(address, length):
    """The job's int64 argument block at ``address``."""
    return carray(_pointer(address, np.int64), (length,))


@njit(inline="always")
def put_vector(block, at, array):
    """Write the (address, length) of the C-contiguous 1-D ``array`` into ``block[at:at + 2]``
    (inside the jitted launcher of a job: from Python, ``array.ctypes.data`` alone costs more
    than a whole launch)."""
    block[at] = array.ctypes.data
    block[at + 1] = array.size


def _drive(function, count, size, data, extra):
    """:func:`run_tasks` as a C function (see :func:`driver_address`)."""
    for i in prange(count):
        call_job(function, np.intc(i), data + i * size, extra)


@intrinsic
def _call_driver(typingctx, driver, function, count, data):
    """Call the driver at address ``driver`` (see :func:`driver_address`) for tasks
    0..count-1 of the job at address ``function``, with the argument block at ``data``."""
    signature = types.void(types.intp, types.intp, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        i64, i32 = ir.IntType(64), ir.IntType(32)
        driver_type = ir.FunctionType(ir.VoidType(), [i64, i32, i64, i64, i32])
        call = builder.inttoptr(args[0], driver_type.as_pointer())
        count32 = builder.trunc(args[2], i32)
        builder.call(call, [args[1], count32, ir.Constant(i64, 0), args[3], count32])
        return context.get_dummy_value()

    return signature, codegen


@njit(inline="always")
def launch(job, tasks, block):
    """Tasks 0..tasks-1 of ``job`` (a :attr:`Job.addresses` pair), with the argument
    ``block``, on the pool (inside a jitted launcher, which keeps the arrays alive while the
    tasks run). The driver is called through its address: a launcher that called
    :func:`run_tasks` directly had its parallel code linked in and optimised again, 0.4 s of
    cold compile per launcher."""
    _call_driver(job[0], job[1], tasks, block.ctypes.data)


@njit(inline="always")
def launch_serially(job, tasks, block):
    """Tasks 0..tasks-1 of ``job`` one after the other, in this thread (what :func:`launch`
    does on the pool; for work too small to share out)."""
    for i in range(tasks):
        call_job(job[1], np.intc(i), block.ctypes.data, np.intc(tasks))


_driver: list = []
_driver_lock = threading.Lock()


def driver_address() -> int:
    """The address of the one parallel driver as a C function
    ``void drive(void *job, int count, size_t size, void *data, int extra)`` (compiled, or
    loaded from the disk cache, on first use; the pool started first)."""
    with _driver_lock:
        if not _driver:
            start_pool()
            _driver.append(cfunc(_DRIVER, parallel=True, cache=True)(_drive))
        return _driver[0].address


def start_pool() -> None:
    """Start Numba's thread pool (once; later calls cost a few microseconds).

    The driver's machine code, loaded from the disk cache and called by a jitted launcher,
    calls into the threading layer, whose symbols exist only once the pool has started. Numba
    starts it when a parallel function is called from Python, not when cached code calls one:
    without this, the first parallel kernel of a process that had not called one from Python
    (kernels imported directly, or a BLAS without the callback API of
    :mod:`refnas.kernels.numba_blas`) crashed with a segmentation fault."""
    run_tasks(0, 0, 0, 0, 0)


@contextlib.contextmanager
def _slp_vectorisation():
    """LLVM's SLP vectoriser on for what compiles inside (Numba switches it off by default
    since numba#8852, after miscompilations in other code), holding Numba's compiler lock so
    that no compile in another thread sees the setting."""
    with global_compiler_lock:
        previous = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            yield
        finally:
            numba.config.SLP_VECTORIZE = previous


class Job:
    """``function(task, block_address, tasks)`` as a C callback, compiled (or loaded from the
    disk cache) on first use: a kernel that never runs in parallel costs no compile. The pool
    is started before the first launch (:func:`start_pool`). With ``vectorise``, compiled with
    LLVM's SLP vectoriser on and FMA contraction allowed (``fastmath={"contract"}``, no
    reassociation): the direct convolution's register-blocked loops need both."""

    def __init__(self, function, vectorise=False):
        self.function = function
        self.vectorise = vectorise
        self._compiled = None
        self._addresses = (0, 0)
        self._lock = threading.Lock()     # one compile: the machine code must stay alive

    @property
    def address(self) -> int:
        with self._lock:
            if self._compiled is None:
                start_pool()
                if self.vectorise:
                    with _slp_vectorisation():
                        compiled = cfunc(JOB, cache=True, fastmath={"contract"})(self.function)
                else:
                    compiled = cfunc(JOB, cache=True)(self.function)
                self._compiled = compiled
                self._addresses = (driver_address(), compiled.address)
            return self._compiled.address

    def assembly(self) -> str:
        """The job's machine code as assembly text (compiled in this process, not loaded)."""
        self.address
        return self._compiled._library.get_asm_str()

    @property
    def addresses(self) -> tuple[int, int]:
        """(the driver's address, the job's): what a launcher hands to :func:`launch`. (Once
        compiled, without taking the lock: the pair is set whole, after the compile.)"""
        addresses = self._addresses
        if not addresses[1]:
            self.address
            addresses = self._addresses
        return addresses


def job(function, vectorise=False) -> Job:
    """The :class:`Job` of ``function(task, block_address, tasks)``."""
    return Job(function, vectorise)
