/* log.h — one line per event on stderr: time, level, connection id, message,
 * then structured fields.
 *
 *   text (log_format=text, the default):
 *   2026-11-25T22:14:03.123Z info  [c7f3a09e1b2d44aa] websocket open peer=127.0.0.1:53120
 *
 *   json (log_format=json): one object per line
 *   {"ts":"2026-11-25T22:14:03.123Z","level":"info","conn":"c7f3a09e1b2d44aa","msg":"websocket open","peer":"127.0.0.1:53120"}
 *
 * The connection id is NULL for process-wide events ("-" in text, null in JSON).
 *
 * Buffering: until sh_log_attach() every line is written at once (start-up
 * errors, --check). Once attached to the loop, lines are appended to a buffer
 * that is written with one write(2) per loop iteration (a uv_check handle), as
 * soon as it passes 64 KiB, at exit (atexit) and on a fatal signal (SIGSEGV,
 * SIGBUS, SIGILL, SIGFPE, SIGABRT, unless a sanitizer already handles it).
 * main() calls sh_log_flush() after uv_run returns. When stderr is a pipe,
 * a line is cut (and marked, as at 16 KiB elsewhere) at PIPE_BUF bytes and
 * writes are cut at line boundaries to at most PIPE_BUF bytes, so processes
 * sharing a pipe (--workers) never interleave within a line.
 *
 * The loop never waits for the log reader: a pipe is written through a
 * non-blocking second open of it (/proc/self/fd/N), a socket with
 * MSG_DONTWAIT. What the reader does not take stays buffered; lines that do
 * not fit are dropped and counted, and a warning "log lines dropped" says how
 * many once the output drains. Only the last flush (exit, fatal signal) waits,
 * up to 5 s without progress. */
#ifndef SH_LOG_H
#define SH_LOG_H

#include <stdint.h>

enum sh_log_level { SH_LOG_DEBUG = 0, SH_LOG_INFO, SH_LOG_WARN, SH_LOG_ERROR };
enum sh_log_format { SH_LOG_TEXT = 0, SH_LOG_JSON };

/* Lines below this level are dropped. Default SH_LOG_INFO. */
void sh_log_set_level(enum sh_log_level level);
int sh_log_enabled(enum sh_log_level level);
/* Parse "debug" | "info" | "warn" | "error"; -1 when unknown. */
int sh_log_parse_level(const char *name);

/* Default SH_LOG_TEXT. */
void sh_log_set_format(enum sh_log_format format);
enum sh_log_format sh_log_get_format(void);
/* Parse "text" | "json"; -1 when unknown. */
int sh_log_parse_format(const char *name);

/* The access log (one line per finished connection). Default on. */
void sh_log_set_access(int on);
int sh_log_access_enabled(void);

/* Apply a generation's log_level, log_format and access_log (at start and on
 * every successful reload: sh_config_apply_log). A plain struct: the log has
 * no dependency on the config (nor on Lua). */
typedef struct sh_log_settings {
    enum sh_log_level level;
    enum sh_log_format format;
    int access; /* one access-log line per finished connection */
} sh_log_settings;
void sh_log_configure(const sh_log_settings *s);

void sh_log(enum sh_log_level level, const char *conn_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Structured fields: after msg, (key, type, value) triples ended by a NULL key:
 *
 *   sh_log_kv(SH_LOG_INFO, c->id, "websocket closed",
 *             "code", SH_LOG_INT, 1000,
 *             "peer", SH_LOG_STR, c->peer,
 *             "bytes_in", SH_LOG_U64, (uint64_t)n, NULL);
 *
 * The value's C type is the type tag's: SH_LOG_STR const char * (NULL: null),
 * SH_LOG_INT int, SH_LOG_I64 int64_t, SH_LOG_U64 uint64_t, SH_LOG_DBL double,
 * SH_LOG_BOOL int. Keys should be [a-z0-9_] and not ts/level/conn/msg. In the
 * text format a field prints as " key=value" (the value quoted when it holds
 * spaces, quotes, '=' or control characters, or is empty). In the message, control
 * characters other than tab become spaces (one line; no terminal escapes). */
enum sh_log_type { SH_LOG_STR = 1, SH_LOG_INT, SH_LOG_I64, SH_LOG_U64, SH_LOG_DBL, SH_LOG_BOOL };
void sh_log_kv(enum sh_log_level level, const char *conn_id, const char *msg, ...)
    __attribute__((sentinel));

/* One access-log line, written at the end of every connection (when
 * access_log is on, whatever log_level says). The transport fills it from
 * its close path. Pointers may be NULL (the field is then omitted). */
typedef struct sh_access {
    const char *conn_id;
    const char *peer;          /* "ip:port" */
    const char *method;        /* last request's method and path (the upgrade's for */
    const char *path;          /* a WebSocket), NULL when no request was read */
    int websocket;             /* 1: the connection was upgraded */
    int http_status;           /* last HTTP status sent (101 for a WebSocket); 0: none */
    uint64_t requests;         /* HTTP requests answered on the connection */
    double duration_ms;        /* accept → close */
    uint64_t bytes_in, bytes_out;       /* socket bytes */
    uint64_t messages_in, messages_out; /* WebSocket messages */
    int close_code;            /* WebSocket close code (1006: no close frame); 0 for HTTP */
    const char *close_reason;  /* WebSocket close reason, or a transport reason ("timeout") */
} sh_access;

void sh_log_access(const sh_access *a);

/* Buffering (see above). attach starts a uv_check handle (unreferenced: it
 * never keeps the loop alive); detach flushes and closes it (the loop must
 * run once more for the close, as for any handle). */
typedef struct uv_loop_s uv_loop_t;
void sh_log_attach(uv_loop_t *loop);
void sh_log_detach(void);
void sh_log_flush(void);

/* Test hook: send output to fd instead of stderr (2). */
void sh_log_set_fd(int fd);

#define sh_debug(id, ...) do { if (sh_log_enabled(SH_LOG_DEBUG)) sh_log(SH_LOG_DEBUG, id, __VA_ARGS__); } while (0)
#define sh_info(id, ...) sh_log(SH_LOG_INFO, id, __VA_ARGS__)
#define sh_warn(id, ...) sh_log(SH_LOG_WARN, id, __VA_ARGS__)
#define sh_error(id, ...) sh_log(SH_LOG_ERROR, id, __VA_ARGS__)

#endif
