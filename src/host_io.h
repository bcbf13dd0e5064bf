/* host_io.h — the Lua host's real I/O backend: libuv timers, the Redis bus
 * (host->bus) and the HTTP client (host->http). See sh_host_io in
 * lua_host.h; the policy test kit (kit.h) has the simulated one. */
#ifndef SH_HOST_IO_H
#define SH_HOST_IO_H

#include "lua_host.h"

/* Install the real backend into h (its bus and http are read at each call). */
void sh_host_io_real(sh_host *h);

#endif
