/* Test plugin: traps on an inquiry whose body contains "poison", loops forever on "spin", and
 * routes everything else to queue `clean`; for the tests that one bad inquiry fails alone.
 * Built by plugins/build.sh (target `test`). */
#include "igw_plugin.h"

static igw_outcome route(const igw_inquiry *in) {
  igw_outcome out = {0};
  if (igw_contains(in->body, "poison")) __builtin_trap();
  if (igw_contains(in->body, "spin")) {
    volatile int forever = 1;
    while (forever) {}
  }
  out.status = IGW_ROUTE;
  out.queue = igw_s("clean");
  return out;
}

IGW_EXPORT_ROUTER(route)
