"""Messages between Cpu and Coordinator objects: plain tuples, so any transport (a function call, msgpack
over ZeroMQ) carries them unchanged. The first item names the kind."""

# CPU -> coordinator
REQUEST = "req"        # (REQUEST, cpu, t, op "kmap"|"kunmap", page, pc)
PROGRESS = "progress"  # (PROGRESS, cpu, bound): running; no ring request before `bound`
DONE = "done"          # (DONE, cpu, clock): program finished

# coordinator -> CPU
REPLY = "reply"        # (REPLY, cpu, t_done, slot, local_flushes: [(t, vpns or None = full flush)] of the caller)
IPI = "ipi"            # (IPI, src, t_send, t_recv, t_handled, t_ack, scope, vpns or None = full flush)
                       # scope "tick" (latr): no interrupt, the lazy list the CPU invalidates at its tick t_recv

# indices into an IPI tuple
IPI_T_RECV = 3
IPI_T_HANDLED = 4
