/* Example routing plugin: the rules of plugins/examples/RULES.md in C (no libc).
 * Build: plugins/build.sh c */
#include "igw_plugin.h"

/* Lower-cased "subject body" in the arena. */
static igw_str lowered_text(const igw_inquiry *in) {
  igw_str parts[3] = {in->subject, {" ", 1}, in->body};
  igw_str text = igw_concat(parts, 3);
  char *p = (char *)text.ptr;
  for (igw_u32 i = 0; i < text.len; i++)
    if (p[i] >= 'A' && p[i] <= 'Z') p[i] = (char)(p[i] - 'A' + 'a');
  return text;
}

static int one_of(igw_str s, const char *const *names) {
  for (; *names; names++)
    if (igw_eq(s, *names)) return 1;
  return 0;
}

/* The team for a buyer's language (primary subtag), else country; NULL when none. */
static const char *team_for(const igw_inquiry *in) {
  igw_str lang = in->buyer_language;
  for (igw_u32 i = 0; i < lang.len; i++)
    if (lang.ptr[i] == '-') { lang.len = i; break; }
  static const char *const eu_lang[] = {"de", "fr", "it", "es", "nl", "pl", 0};
  static const char *const eu_country[] = {"DE", "FR", "IT", "ES", "NL", "PL", "AT", "BE", 0};
  static const char *const cn_country[] = {"CN", "TW", "HK", 0};
  static const char *const en_country[] = {"US", "GB", "AU", "CA", 0};
  if (one_of(lang, eu_lang)) return "eu-sales";
  if (igw_eq(lang, "ja")) return "jp-sales";
  if (igw_eq(lang, "zh")) return "cn-sales";
  if (igw_eq(lang, "en")) return "en-sales";
  igw_str c = in->buyer_country;
  if (one_of(c, eu_country)) return "eu-sales";
  if (igw_eq(c, "JP")) return "jp-sales";
  if (one_of(c, cn_country)) return "cn-sales";
  if (one_of(c, en_country)) return "en-sales";
  return 0;
}

/* Round-robin within the team, skipping agents offline or at capacity. */
static igw_str assign(igw_str team) {
  igw_str none = {"", 0};
  igw_u32 count = 0;
  igw_agent *agents = igw_agents(team, &count);
  if (count == 0) return none;
  igw_str key_parts[2] = {{"rr:", 3}, team};
  igw_str key = igw_concat(key_parts, 2);
  igw_i64 counter = igw_kv_get(key.ptr, key.len);
  igw_i64 start = ((counter % count) + count) % count;
  for (igw_u32 i = 0; i < count; i++) {
    igw_i64 at = (start + i) % count;
    if (agents[at].online && agents[at].load < agents[at].capacity) {
      igw_kv_add(key.ptr, key.len, at + 1 - start);
      return agents[at].id;
    }
  }
  return none;
}

static igw_outcome route(const igw_inquiry *in) {
  igw_outcome out = {0};
  igw_str text = lowered_text(in);
  if (igw_contains(text, "crypto giveaway")) {
    out.status = IGW_ROUTE;
    out.queue = igw_s("spam");
    out.spam_reason = igw_s("giveaway");
    return out;
  }
  const char *known = team_for(in);
  /* No team by the rules: the `default_team` setting's, when it is set. */
  igw_str team = known ? igw_s(known) : igw_setting("default_team");
  if (team.len == 0) {
    out.status = IGW_UNDECIDED;
    return out;
  }
  enum { NORMAL = 1, HIGH = 2, URGENT = 3 } priority = NORMAL;
  igw_str tags[4];
  int ntags = 0;
  if (igw_contains(text, "bulk order") || igw_contains(text, "wholesale")) {
    if (priority < HIGH) priority = HIGH;
    tags[ntags++] = igw_s("bulk");
  }
  if (igw_contains(text, "urgent")) {
    priority = URGENT;
    tags[ntags++] = igw_s("urgent");
  }
  if (igw_contains(text, "refund")) tags[ntags++] = igw_s("refund");
  int vip = igw_eq(igw_attribute(in, "customer_tier"), "vip");
  if (vip) {
    if (priority < HIGH) priority = HIGH;
    tags[ntags++] = igw_s("vip");
  }
  igw_str joined[7];
  int nj = 0;
  for (int i = 0; i < ntags; i++) {
    if (i) joined[nj++] = igw_s("\n");
    joined[nj++] = tags[i];
  }
  out.status = IGW_ROUTE;
  out.queue = team;
  out.tags = igw_concat(joined, nj);
  out.priority = igw_s(priority == URGENT ? "urgent" : priority == HIGH ? "high" : "normal");
  out.sla_policy = igw_s(priority == URGENT ? "sla-15m" : priority == HIGH ? "sla-1h" : "sla-4h");
  if (vip) {
    out.reply_template = igw_s("vip-ack");
  } else {
    igw_str parts[2] = {{"ack-", 4}, team};
    out.reply_template = igw_concat(parts, 2);
  }
  out.language = in->buyer_language;
  out.assignee = assign(out.queue);
  return out;
}

IGW_EXPORT_ROUTER(route)
