/* log.h — one line per event on stderr: time, level, connection id, message.
 *
 *   2026-11-25T22:14:03.123Z info  [c7f3a09e1b2d44aa] websocket open from 127.0.0.1:53120
 *
 * The connection id is NULL for process-wide events (printed as "-"). */
#ifndef SH_LOG_H
#define SH_LOG_H

enum sh_log_level { SH_LOG_DEBUG = 0, SH_LOG_INFO, SH_LOG_WARN, SH_LOG_ERROR };

/* Lines below this level are dropped. Default SH_LOG_INFO. */
void sh_log_set_level(enum sh_log_level level);
int sh_log_enabled(enum sh_log_level level);
/* Parse "debug" | "info" | "warn" | "error"; -1 when unknown. */
int sh_log_parse_level(const char *name);

void sh_log(enum sh_log_level level, const char *conn_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sh_debug(id, ...) do { if (sh_log_enabled(SH_LOG_DEBUG)) sh_log(SH_LOG_DEBUG, id, __VA_ARGS__); } while (0)
#define sh_info(id, ...) sh_log(SH_LOG_INFO, id, __VA_ARGS__)
#define sh_warn(id, ...) sh_log(SH_LOG_WARN, id, __VA_ARGS__)
#define sh_error(id, ...) sh_log(SH_LOG_ERROR, id, __VA_ARGS__)

#endif
