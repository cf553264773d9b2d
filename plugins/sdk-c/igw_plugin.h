/* igw_plugin.h: single-header SDK for inquiry-gateway routing plugins in C (ABI v1).
 *
 * Build with clang for wasm32 without a libc:
 *   clang-19 --target=wasm32-unknown-unknown -O2 -nostdlib -fno-builtin -I plugins/sdk-c \
 *     -Wl,--no-entry -Wl,--export-dynamic -o router.wasm router.c
 * Define `igw_outcome route(const igw_inquiry *in)` and write `IGW_EXPORT_ROUTER(route)` once.
 * The encoding is docs/plugin-abi.md; memory comes from a bump arena that is reset per batch.
 */
#ifndef IGW_PLUGIN_H
#define IGW_PLUGIN_H

typedef unsigned char igw_u8;
typedef unsigned int igw_u32;
typedef long long igw_i64;
typedef unsigned long igw_size;

#define IGW_ABI_VERSION 1u

/* A string view: not NUL-terminated. */
typedef struct { const char *ptr; igw_u32 len; } igw_str;

/* One inquiry; absent values are empty. Field order is the ABI's. */
typedef struct {
  igw_str id, channel, account, message_id, conversation_id, buyer_pseudonym, buyer_country,
      buyer_language, region, subject, body, order_id, product_ids, attributes, occurred_at,
      received_at;
} igw_inquiry;

enum { IGW_ROUTE = 0, IGW_UNDECIDED = 1, IGW_FAILED = 2 };

/* A plugin's answer. For IGW_ROUTE set queue (required) and any of the rest; tags are joined by
 * '\n'. For IGW_FAILED set detail. Strings must live until the batch is encoded (arena or static). */
typedef struct {
  int status;
  igw_str queue, assignee, priority, tags, language, reply_template, sla_policy, spam_reason;
  igw_str detail;
} igw_outcome;

typedef struct { igw_str id; igw_u32 load, capacity, online; } igw_agent;

/* ---- host imports (module "igw"); each needs its capability granted in the gateway config ---- */
#define IGW_IMPORT(name) __attribute__((import_module("igw"), import_name(#name)))
IGW_IMPORT(log) void igw_log(int level, const char *ptr, igw_u32 len);
IGW_IMPORT(counter_add) void igw_counter_add(const char *ptr, igw_u32 len, igw_i64 delta);
IGW_IMPORT(now_ms) igw_i64 igw_now_ms(void);
IGW_IMPORT(agents) igw_u32 igw_agents_raw(const char *team, igw_u32 team_len, igw_u8 *out, igw_u32 cap);
IGW_IMPORT(kv_get) igw_i64 igw_kv_get(const char *ptr, igw_u32 len);
IGW_IMPORT(kv_add) igw_i64 igw_kv_add(const char *ptr, igw_u32 len, igw_i64 delta);
/* The plugin's own settings (no capability needed): see igw_setting. */
IGW_IMPORT(settings) igw_u32 igw_settings_raw(igw_u8 *out, igw_u32 cap);

/* ---- memory: a bump arena over linear memory, reset at the start of every batch ---- */
extern unsigned char __heap_base;
static igw_size igw_heap_top = 0;

static inline void *igw_alloc_bytes(igw_size n) {
  if (igw_heap_top == 0) igw_heap_top = (igw_size)&__heap_base;
  igw_size start = (igw_heap_top + 7) & ~(igw_size)7;
  igw_size end = start + n;
  igw_size have = __builtin_wasm_memory_size(0) * 65536ul;
  if (end > have) {
    igw_size pages = (end - have + 65535) / 65536;
    if (__builtin_wasm_memory_grow(0, pages) == (igw_size)-1) __builtin_trap();
  }
  igw_heap_top = end;
  return (void *)start;
}

static inline void igw_copy(void *dst, const void *src, igw_size n) {
  igw_u8 *d = dst;
  const igw_u8 *s = src;
  while (n--) *d++ = *s++;
}

/* clang may lower struct copies to memcpy/memset even with -fno-builtin. */
void *memcpy(void *dst, const void *src, igw_size n) { igw_copy(dst, src, n); return dst; }
void *memset(void *dst, int c, igw_size n) {
  igw_u8 *d = dst;
  while (n--) *d++ = (igw_u8)c;
  return dst;
}

/* ---- string helpers ---- */
static inline igw_str igw_s(const char *cstr) {
  igw_u32 n = 0;
  while (cstr[n]) n++;
  igw_str s = {cstr, n};
  return s;
}

static inline int igw_eq(igw_str a, const char *b) {
  igw_str s = igw_s(b);
  if (a.len != s.len) return 0;
  for (igw_u32 i = 0; i < a.len; i++)
    if (a.ptr[i] != s.ptr[i]) return 0;
  return 1;
}

/* Does `hay` contain `needle`? (byte-wise) */
static inline int igw_contains(igw_str hay, const char *needle) {
  igw_str n = igw_s(needle);
  if (n.len == 0) return 1;
  for (igw_u32 i = 0; i + n.len <= hay.len; i++) {
    igw_u32 j = 0;
    while (j < n.len && hay.ptr[i + j] == n.ptr[j]) j++;
    if (j == n.len) return 1;
  }
  return 0;
}

/* Concatenates `count` strings into the arena. */
static inline igw_str igw_concat(const igw_str *parts, int count) {
  igw_u32 len = 0;
  for (int i = 0; i < count; i++) len += parts[i].len;
  char *buf = igw_alloc_bytes(len + 1);
  igw_u32 at = 0;
  for (int i = 0; i < count; i++) {
    igw_copy(buf + at, parts[i].ptr, parts[i].len);
    at += parts[i].len;
  }
  igw_str s = {buf, len};
  return s;
}

/* The value of attribute `key` (lines of key=value), or an empty string. */
static inline igw_str igw_attribute(const igw_inquiry *in, const char *key) {
  igw_str k = igw_s(key), none = {"", 0};
  igw_u32 i = 0;
  while (i < in->attributes.len) {
    igw_u32 end = i;
    while (end < in->attributes.len && in->attributes.ptr[end] != '\n') end++;
    igw_u32 line_len = end - i;
    if (line_len > k.len && in->attributes.ptr[i + k.len] == '=') {
      igw_str name = {in->attributes.ptr + i, k.len};
      if (igw_eq(name, key)) {
        igw_str value = {in->attributes.ptr + i + k.len + 1, line_len - k.len - 1};
        return value;
      }
    }
    i = end + 1;
  }
  return none;
}

/* ---- wire format ---- */
static inline igw_u32 igw_read_u32(const igw_u8 *p) {
  return (igw_u32)p[0] | (igw_u32)p[1] << 8 | (igw_u32)p[2] << 16 | (igw_u32)p[3] << 24;
}

static inline void igw_write_u32(igw_u8 *p, igw_u32 v) {
  p[0] = (igw_u8)v; p[1] = (igw_u8)(v >> 8); p[2] = (igw_u8)(v >> 16); p[3] = (igw_u8)(v >> 24);
}

/* The agents of `team`; *count receives how many. */
static inline igw_agent *igw_agents(igw_str team, igw_u32 *count) {
  igw_u32 cap = 256;
  igw_u8 *buf = igw_alloc_bytes(cap);
  igw_u32 need = igw_agents_raw(team.ptr, team.len, buf, cap);
  if (need > cap) {
    buf = igw_alloc_bytes(need);
    igw_agents_raw(team.ptr, team.len, buf, need);
  }
  *count = need >= 4 ? igw_read_u32(buf) : 0;
  igw_agent *agents = igw_alloc_bytes(sizeof(igw_agent) * (*count + 1));
  igw_u32 at = 4;
  for (igw_u32 i = 0; i < *count; i++) {
    igw_u32 len = igw_read_u32(buf + at);
    agents[i].id.ptr = (const char *)buf + at + 4;
    agents[i].id.len = len;
    at += 4 + len;
    agents[i].load = igw_read_u32(buf + at);
    agents[i].capacity = igw_read_u32(buf + at + 4);
    agents[i].online = igw_read_u32(buf + at + 8);
    at += 12;
  }
  return agents;
}

/* Settings up to this size are read once per instance into a static buffer; larger ones are
 * read into the arena on every igw_setting call (define it before including to change it). */
#ifndef IGW_SETTINGS_CACHE
#define IGW_SETTINGS_CACHE 4096
#endif
static igw_u8 igw_settings_cache[IGW_SETTINGS_CACHE];
static igw_u32 igw_settings_len = 0xffffffffu; /* not read yet */

/* The value of the plugin's setting `key` from the gateway's configuration (strings as they are,
 * other values as JSON text), or an empty string when it is not set. Valid until the batch ends
 * (settings do not change while an instance lives). */
static inline igw_str igw_setting(const char *key) {
  igw_str none = {"", 0};
  if (igw_settings_len == 0xffffffffu) igw_settings_len = igw_settings_raw(igw_settings_cache, IGW_SETTINGS_CACHE);
  igw_u8 *buf = igw_settings_cache;
  igw_u32 need = igw_settings_len;
  if (need > IGW_SETTINGS_CACHE) {
    buf = igw_alloc_bytes(need);
    igw_settings_raw(buf, need);
  }
  if (need < 4) return none;
  igw_u32 count = igw_read_u32(buf), at = 4;
  for (igw_u32 i = 0; i < count; i++) {
    igw_str pair[2];
    for (int j = 0; j < 2; j++) {
      if (at + 4 > need) return none;
      igw_u32 n = igw_read_u32(buf + at);
      if (n > need - at - 4) return none;
      pair[j].ptr = (const char *)buf + at + 4;
      pair[j].len = n;
      at += 4 + n;
    }
    if (igw_eq(pair[0], key)) return pair[1];
  }
  return none;
}

typedef struct { igw_u8 *buf; igw_u32 len, cap; } igw_out;

static inline void igw_out_reserve(igw_out *o, igw_u32 more) {
  if (o->len + more <= o->cap) return;
  igw_u32 cap = o->cap ? o->cap * 2 : 4096;
  while (cap < o->len + more) cap *= 2;
  igw_u8 *bigger = igw_alloc_bytes(cap);
  igw_copy(bigger, o->buf, o->len);
  o->buf = bigger;
  o->cap = cap;
}

static inline void igw_put_str(igw_out *o, igw_str s) {
  igw_out_reserve(o, 4 + s.len);
  igw_write_u32(o->buf + o->len, s.len);
  igw_copy(o->buf + o->len + 4, s.ptr, s.len);
  o->len += 4 + s.len;
}

static inline void igw_put_outcome(igw_out *o, const igw_outcome *r) {
  igw_out_reserve(o, 5);
  igw_u32 start = o->len + 4;
  o->len += 4;
  o->buf[o->len++] = (igw_u8)r->status;
  if (r->status == IGW_ROUTE) {
    const igw_str fields[8] = {r->queue, r->assignee, r->priority, r->tags,
                               r->language, r->reply_template, r->sla_policy, r->spam_reason};
    for (int i = 0; i < 8; i++) igw_put_str(o, fields[i]);
  } else if (r->status == IGW_FAILED) {
    igw_put_str(o, r->detail);
  }
  igw_write_u32(o->buf + start - 4, o->len - start);
}

/* Exports igw_abi_version, igw_alloc and igw_route around `route`. */
#define IGW_EXPORT_ROUTER(route)                                                          \
  __attribute__((export_name("igw_abi_version"))) igw_u32 igw_abi_version(void) {          \
    return IGW_ABI_VERSION;                                                                \
  }                                                                                        \
  __attribute__((export_name("igw_alloc"))) void *igw_alloc(igw_u32 len) {                 \
    igw_heap_top = 0; /* a new batch: everything of the previous one is done */            \
    return igw_alloc_bytes(len);                                                           \
  }                                                                                        \
  __attribute__((export_name("igw_route"))) igw_i64 igw_route(const igw_u8 *in, igw_u32 len) { \
    if (len < 8 || igw_read_u32(in) != IGW_ABI_VERSION) return -1;                         \
    igw_u32 count = igw_read_u32(in + 4), at = 8;                                          \
    igw_out o = {0, 0, 0};                                                                 \
    igw_out_reserve(&o, 4);                                                                \
    igw_write_u32(o.buf, count);                                                           \
    o.len = 4;                                                                             \
    for (igw_u32 i = 0; i < count; i++) {                                                  \
      if (at + 4 > len) return -1;                                                         \
      igw_u32 rec_len = igw_read_u32(in + at), end = at + 4 + rec_len, p = at + 4;         \
      if (end > len) return -1;                                                            \
      igw_inquiry inq;                                                                     \
      igw_str *fields = (igw_str *)&inq;                                                   \
      for (int f = 0; f < 16; f++) {                                                       \
        if (p + 4 > end) { fields[f].ptr = ""; fields[f].len = 0; continue; }              \
        igw_u32 n = igw_read_u32(in + p);                                                  \
        if (p + 4 + n > end) return -1;                                                    \
        fields[f].ptr = (const char *)in + p + 4;                                          \
        fields[f].len = n;                                                                 \
        p += 4 + n;                                                                        \
      }                                                                                    \
      igw_outcome r = route(&inq);                                                         \
      igw_put_outcome(&o, &r);                                                             \
      at = end;                                                                            \
    }                                                                                      \
    return ((igw_i64)(igw_size)o.buf << 32) | o.len;                                       \
  }

#endif
