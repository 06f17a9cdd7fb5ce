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
hands it with the job's address to :func:`run_tasks`, the single ``prange`` driver, which calls
the job once per task (:func:`launch`). OpenBLAS's parallel sections run through the same driver
(:mod:`refnas.kernels.numba_blas`).

Inside a job, :func:`vector` turns an (address, length) pair back into a 1-D array. The arrays
are the launcher's arguments, alive while the tasks run; its signature fixes their dtypes and
C-contiguity, which the job cannot check.
"""
from __future__ import annotations

import threading

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, prange, types
from numba.extending import intrinsic

# void job(int task, void *block, int tasks): pointers travel as 64-bit integers
JOB = types.void(types.intc, types.intp, types.intc)


@intrinsic
def _call_job(typingctx, function, thread, data, extra):
    """Call the C function at address ``function`` as ``void f(int, void *, int)``."""
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
        _call_job(function, np.intc(i), data + i * size, extra)


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


@njit(inline="always")
def launch(job_address, tasks, block):
    """Tasks 0..tasks-1 of the job at ``job_address``, with the argument ``block``, on the pool
    (inside a jitted launcher, which keeps the arrays alive while the tasks run)."""
    run_tasks(job_address, tasks, 0, block.ctypes.data, tasks)


def start_pool() -> None:
    """Start Numba's thread pool (once; later calls cost a few microseconds).

    A jitted launcher loaded from the disk cache calls :func:`run_tasks`'s machine code
    directly, and that code calls into the threading layer, whose symbols exist only once the
    pool has started. Numba starts it when a parallel function is called from Python, not when
    a cached caller of one is: without this, the first parallel kernel of a process that had
    not called one from Python (kernels imported directly, or a BLAS without the callback API
    of :mod:`refnas.kernels.numba_blas`) crashed with a segmentation fault."""
    run_tasks(0, 0, 0, 0, 0)


class Job:
    """``function(task, block_address, tasks)`` as a C callback, compiled (or loaded from the
    disk cache) on first use: a kernel that never runs in parallel costs no compile. The pool
    is started before the first launch (:func:`start_pool`)."""

    def __init__(self, function):
        self.function = function
        self._compiled = None
        self._lock = threading.Lock()     # one compile: the machine code must stay alive

    @property
    def address(self) -> int:
        with self._lock:
            if self._compiled is None:
                start_pool()
                self._compiled = cfunc(JOB, cache=True)(self.function)
            return self._compiled.address


def job(function) -> Job:
    """The :class:`Job` of ``function(task, block_address, tasks)``."""
    return Job(function)
