/* fuzz_route.c — libFuzzer target for the headers a policy's route returns (src/lua_api.c:
 * route_done / route_headers, then sh_conn_respond in src/conn.c).
 *
 * The machinery is the policy test kit's (src/kit.c, compiled into this file so that its Lua
 * module can be opened): a world with the real Lua host, policy layer and transport, whose
 * connections' socket is a capture buffer. A tiny policy is loaded once; its route "POST /f"
 * decodes the request body into `status, body, headers` and returns them. Each input becomes one
 * request on a new connection; the bytes the transport wrote back are checked.
 *
 * Input: byte 0 flags — bit 0: a body follows (length byte, bytes; else the route's body is nil);
 * bit 1: the headers are a string, not a table; bit 2: the status is bytes 1-2 as they are (may
 * be outside 200..599; else 200 + their value % 400). Then header entries, each: a type byte (bits
 * 0-1 the key: 1 the integer #name, 2 the boolean true, else the name string; bits 2-3 the value:
 * 1 an integer (up to 8 bytes, little-endian, signed), 2 a float (8 bytes), 3 false, else the
 * string; bit 4: the value is repeated 64 times), a name length byte, the name, a value length
 * byte, the value. Names and values are any bytes (NUL, CR, LF, colons, spaces...); the same key
 * twice keeps the last value, as a Lua table does.
 *
 * Invariants (a violation aborts, so libFuzzer keeps the input): the connection's output is
 * exactly one well-formed HTTP/1.1 response — a status line, header lines whose names are tokens
 * and whose values hold no control character but HTAB, exactly one Content-Type, Content-Length
 * and Connection, no Transfer-Encoding, Content-Length the length of the body that follows (a
 * 204 has no Content-Length, and a 204 or 304 no body: one given is a 500) — and:
 * - when every header is a string name (an RFC 9110 token) mapped to a string or number without
 *   control characters (HTAB aside) and the status is 200..599: that status, the body, the
 *   Content-Type given (or text/plain; charset=utf-8) and every other header given exactly as
 *   given, except Content-Length, Connection and Transfer-Encoding, which statushost sets (or,
 *   when the head would pass 16 KiB, a 500);
 * - otherwise a 500 with the body "500 Internal Server Error\n";
 * - the connection is freed once the peer closes.
 *
 * Build and run: tests/fuzz/run.sh (see there). SH_FUZZ_VERBOSE=1 shows the logs and responses. */
#define _GNU_SOURCE /* memmem */
#include "kit.c"

#include <stdint.h>
#include <unistd.h>

#define FUZZ_NAME "fuzz_route"
#include "fuzz_check.h"

#define MAX_HDRS 2048
#define HEAD_MAX (16 * 1024) /* conn.c's MAX_HEAD_OUT */

static const char policy_src[] =
    "return { routes = { ['POST /f'] = function(req)\n"
    "  local b = req.body\n"
    "  local flags, status, pos = string.unpack('<BI2', b)\n"
    "  local body\n"
    "  if flags & 1 ~= 0 then body, pos = string.unpack('<s2', b, pos) end\n"
    "  if flags & 2 ~= 0 then return status, body, 'not a table' end\n"
    "  local h = {}\n"
    "  while pos <= #b do\n"
    "    local kt, vt, k, v\n"
    "    kt, vt, k, v, pos = string.unpack('<BBs2s2', b, pos)\n"
    "    local key, val = k, v\n"
    "    if kt == 1 then key = #k elseif kt == 2 then key = true end\n"
    "    if vt == 1 then val = math.tointeger(tonumber(v))\n"
    "    elseif vt == 2 then val = string.unpack('<d', v)\n"
    "    elseif vt == 3 then val = false end\n"
    "    h[key] = val\n"
    "  end\n"
    "  return status, body, h\n"
    "end } }\n";

/* The driver, in the test kit's Lua state (as scripts/test.lua drives worlds). */
static const char driver_src[] =
    "local kit = require 'statushost.kit'\n"
    "local script = ...\n"
    "local w = assert(kit.load(script, {}, false))\n"
    "return function(request)\n"
    "  local c = w:connect()\n"
    "  w:input(c, request)\n"
    "  w:settle()\n"
    "  local out = w:output(c)\n"
    "  w:input(c, nil)\n"
    "  w:settle()\n"
    "  local more, _, _, freed = w:output(c)\n"
    "  return out, more, freed\n"
    "end, w\n";

static lua_State *D;   /* the driver's state */
static int run_ref;    /* its function(request) */
static kit_world *world;
static int verbose;
static char script_path[64];

static void remove_script(void)
{
    unlink(script_path);
}

static void setup(void)
{
    verbose = getenv("SH_FUZZ_VERBOSE") != NULL;
    sh_log_set_level(verbose ? SH_LOG_DEBUG : (enum sh_log_level)(SH_LOG_ERROR + 1));
    sh_log_set_access(verbose);
    snprintf(script_path, sizeof script_path, "/tmp/sh-fuzz-route-XXXXXX.lua");
    int fd = mkstemps(script_path, 4);
    CHECK(fd >= 0, "mkstemps");
    CHECK(write(fd, policy_src, sizeof policy_src - 1) == (ssize_t)(sizeof policy_src - 1),
          "write %s", script_path);
    close(fd);
    atexit(remove_script);
    D = luaL_newstate();
    CHECK(D, "luaL_newstate");
    luaL_openlibs(D);
    luaL_getsubtable(D, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(D, luaopen_kit);
    lua_setfield(D, -2, "statushost.kit");
    lua_pop(D, 1);
    CHECK(luaL_loadbuffer(D, driver_src, sizeof driver_src - 1, "driver") == LUA_OK, "%s",
          lua_tostring(D, -1));
    lua_pushstring(D, script_path);
    CHECK(lua_pcall(D, 1, 2, 0) == LUA_OK, "driver: %s", lua_tostring(D, -1));
    world = luaL_checkudata(D, -1, WORLD_MT);
    lua_setfield(D, LUA_REGISTRYINDEX, "fuzz_route.world"); /* anchored */
    run_ref = luaL_ref(D, LUA_REGISTRYINDEX);
}

/* ---- the model: what the route returns, decoded from the input ------------------------------ */

enum { K_STR, K_NUM, K_BOOL };
enum { V_STR, V_INT, V_FLOAT, V_FALSE };

typedef struct {
    int kt, vt;
    const uint8_t *name;
    size_t name_len;
    uint8_t *raw;      /* the value as sent to the route */
    size_t raw_len;
    char *text;        /* the value as the response must carry it (strings, numbers) */
    size_t text_len;
    int dead;          /* replaced by a later entry with the same key */
} entry;

static entry hdrs[MAX_HDRS];
static size_t nhdrs;

static int is_tchar(uint8_t ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int token_ok(const uint8_t *s, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar(s[i]))
            return 0;
    return 1;
}

/* A field value: no control character but HTAB (obs-text allowed). */
static int value_ok(const uint8_t *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f)
            return 0;
    return 1;
}

static int name_is(const entry *e, const char *lower)
{
    size_t n = strlen(lower);
    if (e->name_len != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = e->name[i];
        if ((ch >= 'A' && ch <= 'Z' ? ch + 32 : ch) != (uint8_t)lower[i])
            return 0;
    }
    return 1;
}

static int same_key(const entry *a, const entry *b)
{
    if (a->kt != b->kt)
        return 0;
    if (a->kt == K_BOOL)
        return 1;
    if (a->kt == K_NUM)
        return a->name_len == b->name_len;
    return a->name_len == b->name_len && memcmp(a->name, b->name, a->name_len) == 0;
}

/* Lua's tostring of a float (LUAI_NUMFFORMAT, ".0" when it looks like an integer). */
static size_t lua_float_text(double d, char *out, size_t sz)
{
    int n = snprintf(out, sz, "%.14g", d);
    if (out[strspn(out, "-0123456789")] == '\0')
        n += snprintf(out + n, sz - (size_t)n, ".0");
    return (size_t)n;
}

static void free_model(void)
{
    for (size_t i = 0; i < nhdrs; i++) {
        free(hdrs[i].raw);
        free(hdrs[i].text);
    }
    nhdrs = 0;
}

/* ---- the response ---------------------------------------------------------------------------- */

typedef struct {
    const char *p;
    size_t len;
} span;

typedef struct {
    int status;
    span lines[MAX_HDRS + 8]; /* header lines, without CRLF */
    size_t nlines;
    span body;
} response;

/* Parses out as one complete HTTP/1.1 response; any malformation is a finding. */
static void parse_response(const char *out, size_t len, response *r)
{
    memset(r, 0, sizeof *r);
    const char *end = out + len;
    const char *eol = memmem(out, len, "\r\n", 2);
    CHECK(eol, "no status line in %zu bytes", len);
    char sl[128];
    size_t sll = (size_t)(eol - out);
    CHECK(sll < sizeof sl, "status line of %zu bytes", sll);
    memcpy(sl, out, sll);
    sl[sll] = '\0';
    int n = 0;
    CHECK(sscanf(sl, "HTTP/1.1 %3d %n", &r->status, &n) == 1 && n == 13 && sl[12] == ' ' &&
              r->status >= 100 && r->status <= 599 && sll > 13 && value_ok((const uint8_t *)sl + 13, sll - 13),
          "status line [%s]", sl);
    const char *p = eol + 2;
    for (;;) {
        eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        CHECK(eol, "head not ended");
        if (eol == p)
            break;
        CHECK(r->nlines < sizeof r->lines / sizeof r->lines[0], "too many header lines");
        span *l = &r->lines[r->nlines++];
        l->p = p;
        l->len = (size_t)(eol - p);
        const char *colon = memchr(p, ':', l->len);
        CHECK(colon && token_ok((const uint8_t *)p, (size_t)(colon - p)),
              "header line [%.*s]: no token name", (int)l->len, p);
        CHECK(colon + 1 < eol && colon[1] == ' ' &&
                  value_ok((const uint8_t *)colon + 2, (size_t)(eol - colon - 2)),
              "header line [%.*s]: a bad value", (int)l->len, p);
        p = eol + 2;
    }
    r->body.p = eol + 2;
    r->body.len = (size_t)(end - r->body.p);
}

/* The value of the only line named name (case-insensitive); aborts if not exactly one. */
static span header_one(const response *r, const char *name)
{
    span v = {NULL, 0};
    size_t nl = strlen(name), count = 0;
    for (size_t i = 0; i < r->nlines; i++) {
        const span *l = &r->lines[i];
        if (l->len > nl && l->p[nl] == ':' && strncasecmp(l->p, name, nl) == 0) {
            count++;
            v.p = l->p + nl + 2;
            v.len = l->len - nl - 2;
        }
    }
    CHECK(count == 1, "%zu %s lines", count, name);
    return v;
}

static int span_is(span s, const char *p, size_t n)
{
    return s.len == n && (n == 0 || memcmp(s.p, p, n) == 0);
}

/* ---- one input ------------------------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 3)
        return 0;
    uint8_t flags = data[0];
    unsigned raw_status = data[1] | (unsigned)data[2] << 8;
    unsigned status = flags & 4 ? raw_status : 200 + raw_status % 400;
    size_t i = 3;
    const uint8_t *body = NULL;
    size_t body_len = 0;
    if (flags & 1) {
        body_len = i < size ? data[i++] : 0;
        body_len = body_len < size - i ? body_len : size - i;
        body = data + i;
        i += body_len;
    }
    /* the request body: flags, status, [body], entries as the policy decodes them */
    sh_buf req = {0};
    uint8_t b3[3] = {flags, (uint8_t)status, (uint8_t)(status >> 8)};
    CHECK(sh_buf_append(&req, (const char *)b3, 3) == 0, "oom");
    if (flags & 1) {
        uint8_t l2[2] = {(uint8_t)body_len, (uint8_t)(body_len >> 8)};
        CHECK(sh_buf_append(&req, (const char *)l2, 2) == 0 &&
                  sh_buf_append(&req, (const char *)body, body_len) == 0,
              "oom");
    }
    while (i < size && nhdrs < MAX_HDRS) {
        entry *e = &hdrs[nhdrs++];
        memset(e, 0, sizeof *e);
        uint8_t t = data[i++];
        e->kt = (t & 3) == 1 ? K_NUM : (t & 3) == 2 ? K_BOOL : K_STR;
        e->vt = (t >> 2) & 3;
        size_t nl = i < size ? data[i++] : 0;
        nl = nl < size - i ? nl : size - i;
        e->name = data + i;
        e->name_len = nl;
        i += nl;
        size_t vl = i < size ? data[i++] : 0;
        vl = vl < size - i ? vl : size - i;
        const uint8_t *v = data + i;
        i += vl;
        size_t reps = t & 0x10 ? 64 : 1;
        char num[64];
        if (e->vt == V_INT || e->vt == V_FLOAT) {
            uint8_t b8[8] = {0};
            memcpy(b8, v, vl < 8 ? vl : 8);
            uint64_t u = 0;
            for (int j = 7; j >= 0; j--)
                u = u << 8 | b8[j];
            if (e->vt == V_INT) {
                e->raw_len = (size_t)snprintf(num, sizeof num, "%lld", (long long)(int64_t)u);
                e->text = strdup(num);
                e->text_len = e->raw_len;
                e->raw = (uint8_t *)strdup(num);
            } else {
                double d;
                memcpy(&d, b8, 8);
                e->text_len = lua_float_text(d, num, sizeof num);
                e->text = strdup(num);
                e->raw = malloc(8);
                CHECK(e->raw, "oom");
                memcpy(e->raw, b8, 8);
                e->raw_len = 8;
            }
        } else {
            e->raw_len = vl * reps;
            e->raw = malloc(e->raw_len + 1);
            CHECK(e->raw, "oom");
            for (size_t j = 0; j < reps; j++)
                memcpy(e->raw + j * vl, v, vl);
            if (e->vt == V_STR) {
                e->text = malloc(e->raw_len + 1);
                CHECK(e->text, "oom");
                memcpy(e->text, e->raw, e->raw_len);
                e->text_len = e->raw_len;
            }
        }
        CHECK(e->raw && (e->vt == V_FALSE || e->text), "oom");
        uint8_t hd[4] = {(uint8_t)(t & 3), (uint8_t)e->vt, (uint8_t)nl, (uint8_t)(nl >> 8)};
        uint8_t vh[2] = {(uint8_t)e->raw_len, (uint8_t)(e->raw_len >> 8)};
        CHECK(sh_buf_append(&req, (const char *)hd, 4) == 0 &&
                  sh_buf_append(&req, (const char *)e->name, nl) == 0 &&
                  sh_buf_append(&req, (const char *)vh, 2) == 0 &&
                  sh_buf_append(&req, (const char *)e->raw, e->raw_len) == 0,
              "oom");
        for (size_t j = 0; j + 1 < nhdrs; j++) /* a table keeps the last value of a key */
            if (same_key(&hdrs[j], e))
                hdrs[j].dead = 1;
    }

    /* the model's verdict */
    int valid = status >= 200 && status <= 599 && !(flags & 2) &&
                !((status == 204 || status == 304) && body_len > 0); /* they have no body */
    size_t extra = 0, nct = 0, min_ct = SIZE_MAX, max_ct = 0, nexp = 0;
    for (size_t j = 0; j < nhdrs && valid; j++) {
        entry *e = &hdrs[j];
        if (e->dead)
            continue;
        if (e->kt != K_STR || e->vt == V_FALSE || !token_ok(e->name, e->name_len) ||
            !value_ok((const uint8_t *)e->text, e->text_len)) {
            valid = 0;
            break;
        }
        if (name_is(e, "content-type")) {
            nct++;
            min_ct = e->text_len < min_ct ? e->text_len : min_ct;
            max_ct = e->text_len > max_ct ? e->text_len : max_ct;
        } else if (!name_is(e, "content-length") && !name_is(e, "connection") &&
                   !name_is(e, "transfer-encoding")) {
            extra += e->name_len + 2 + e->text_len + 2;
            nexp++;
        }
    }
    if (nct == 0)
        min_ct = max_ct = strlen("text/plain; charset=utf-8");

    /* the request */
    char head[128];
    int hl = snprintf(head, sizeof head,
                      "POST /f HTTP/1.1\r\nHost: fuzz\r\nContent-Length: %zu\r\n\r\n", req.len);
    lua_rawgeti(D, LUA_REGISTRYINDEX, run_ref);
    luaL_Buffer lb;
    luaL_buffinit(D, &lb);
    luaL_addlstring(&lb, head, (size_t)hl);
    luaL_addlstring(&lb, req.p, req.len);
    luaL_pushresult(&lb);
    sh_buf_free(&req);
    CHECK(lua_pcall(D, 1, 3, 0) == LUA_OK, "driver: %s", lua_tostring(D, -1));
    size_t olen = 0;
    const char *out = lua_tolstring(D, -3, &olen);
    size_t morelen = 0;
    lua_tolstring(D, -2, &morelen);
    CHECK(morelen == 0, "%zu bytes after the response", morelen);
    CHECK(lua_toboolean(D, -1), "the connection was not freed after the peer's EOF");
    if (verbose)
        fprintf(stderr, "valid %d status %u -> %.*s\n", valid, status, (int)olen, out);

    static response r;
    parse_response(out, olen, &r);
    span cl = {"0", 1}; /* a 204 has none (RFC 9110 §8.6) */
    if (r.status == 204) {
        for (size_t j = 0; j < r.nlines; j++)
            CHECK(r.lines[j].len < 15 || strncasecmp(r.lines[j].p, "content-length:", 15) != 0,
                  "a 204 with [%.*s]", (int)r.lines[j].len, r.lines[j].p);
    } else {
        cl = header_one(&r, "Content-Length");
    }
    span ct = header_one(&r, "Content-Type");
    header_one(&r, "Connection");
    for (size_t j = 0; j < r.nlines; j++)
        CHECK(r.lines[j].len < 18 || strncasecmp(r.lines[j].p, "transfer-encoding:", 18) != 0,
              "a Transfer-Encoding line: [%.*s]", (int)r.lines[j].len, r.lines[j].p);
    char clv[32];
    int cll = snprintf(clv, sizeof clv, "%zu", r.body.len);
    CHECK(span_is(cl, clv, (size_t)cll), "Content-Length %.*s for a body of %zu bytes",
          (int)cl.len, cl.p, r.body.len);

    int over_min = extra + min_ct > HEAD_MAX, over_max = extra + max_ct > HEAD_MAX;
    if (!valid || (over_min && r.status == 500)) {
        CHECK(r.status == 500 && span_is(r.body, "500 Internal Server Error\n", 26),
              "invalid headers (or status %u) answered %d", status, r.status);
    } else if (over_max && r.status == 500 && span_is(r.body, "500 Internal Server Error\n", 26)) {
        /* the head would pass 16 KiB with the Content-Type chosen */
    } else {
        CHECK(!over_min, "a head over 16 KiB answered %d", r.status);
        CHECK(r.status == (int)status, "status %d, the route said %u", r.status, status);
        CHECK(span_is(r.body, (const char *)body, body_len), "the body differs (%zu vs %zu)",
              r.body.len, body_len);
        if (nct == 0) {
            CHECK(span_is(ct, "text/plain; charset=utf-8", 25), "Content-Type %.*s",
                  (int)ct.len, ct.p);
        } else {
            int found = 0;
            for (size_t j = 0; j < nhdrs; j++)
                if (!hdrs[j].dead && name_is(&hdrs[j], "content-type") &&
                    span_is(ct, hdrs[j].text, hdrs[j].text_len))
                    found = 1;
            CHECK(found, "Content-Type %.*s was not given", (int)ct.len, ct.p);
        }
        /* every other header given, once, as given; nothing else but Server */
        for (size_t j = 0; j < nhdrs; j++) {
            entry *e = &hdrs[j];
            if (e->dead || name_is(e, "content-type") || name_is(e, "content-length") ||
                name_is(e, "connection") || name_is(e, "transfer-encoding"))
                continue;
            size_t count = 0;
            for (size_t k = 0; k < r.nlines; k++) {
                const span *l = &r.lines[k];
                if (l->len == e->name_len + 2 + e->text_len &&
                    memcmp(l->p, e->name, e->name_len) == 0 && l->p[e->name_len] == ':' &&
                    memcmp(l->p + e->name_len + 2, e->text, e->text_len) == 0)
                    count++;
            }
            size_t want = e->name_len == 6 && memcmp(e->name, "Server", 6) == 0 &&
                                  e->text_len == 10 && memcmp(e->text, "statushost", 10) == 0
                              ? 2 /* statushost's own Server line is the same */
                              : 1;
            CHECK(count == want, "header %.*s given once, %zu such lines", (int)e->name_len,
                  (const char *)e->name, count);
        }
        CHECK(r.nlines == (r.status == 204 ? 3u : 4u) + nexp, "%zu header lines for %zu given",
              r.nlines, nexp);
    }
    lua_pop(D, 3);
    free_model();
    kit_client *k, *tmp; /* the kit keeps its clients until the world closes: not here */
    DL_FOREACH_SAFE(world->clients, k, tmp) {
        if (!k->c) {
            DL_DELETE(world->clients, k);
            sh_buf_free(&k->rx);
            sh_buf_free(&k->tx);
            free(k);
        }
    }
    /* the garbage of this input goes now: libFuzzer runs LeakSanitizer after any input whose
     * mallocs and frees do not balance, which Lua's collector would make every one */
    lua_gc(world->gen->L, LUA_GCCOLLECT);
    lua_gc(D, LUA_GCCOLLECT);
    return 0;
}
