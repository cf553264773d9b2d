#!/usr/bin/env python3
"""Helper of benches/compare.sh: merges one run's measurements into a JSON line, picks the best
saturation run, and prints the report (tables, ratios, the issue's targets) from the JSON lines.

  compare.py machine COMMIT SECS WARM CONNS RATE_CONNS
  compare.py merge SYSTEM LOADGEN_JSON SNAP0 SNAP1
  compare.py best RESULTS_JSONL SYSTEM
  compare.py report RESULTS_JSONL
"""
import json
import os
import platform
import re
import subprocess
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")
HOP = "inquiry_gateway_hop_duration_seconds"


def buckets(text, hop):
    """Cumulative (le, count) pairs of the gateway's hop histogram, summed over channels."""
    sums = {}
    pattern = r'%s_bucket\{([^}]*)\} (\S+)' % HOP
    for labels, n in re.findall(pattern, text):
        if 'hop="%s"' % hop not in labels:
            continue
        le = re.search(r'le="([^"]+)"', labels).group(1)
        le = float("inf") if le == "+Inf" else float(le)
        sums[le] = sums.get(le, 0.0) + float(n)
    return sorted(sums.items())


def quantile(b, q):
    """Like Prometheus' histogram_quantile: linear interpolation inside the bucket."""
    if not b or b[-1][1] <= 0:
        return None
    total = b[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in b:
        if n >= q * total:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((q * total - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
    return None


def counter(text, name, labels):
    m = re.search(r'%s\{%s\} (\S+)' % (re.escape(name), re.escape(labels)), text)
    return float(m.group(1)) if m else None


def merge(system, loadgen, s0, s1):
    run = json.load(open(loadgen))
    a, b = json.load(open(s0)), json.load(open(s1))
    window = b["t"] - a["t"]
    run["system"] = system
    run["window_s"] = round(window, 2)
    cpu = (b["cpu"] - a["cpu"]) / TICKS
    kafka_cpu = (b["kafka_cpu"] - a["kafka_cpu"]) / TICKS
    run["cpu_s"] = round(cpu, 2)
    run["cores"] = round(cpu / window, 2)
    run["rss_mib"] = round(b["rss_kib"] / 1024, 1)
    run["kafka_cpu_s"] = round(kafka_cpu, 2)
    # CPU per acknowledged inquiry over the same window (the load generator counts answers to
    # requests scheduled inside its measured window, which this window brackets).
    done = max(run["requests"], 1)
    run["cpu_us_per_inquiry"] = round(cpu * 1e6 / done, 1)
    run["kafka_cpu_us_per_inquiry"] = round(kafka_cpu * 1e6 / done, 1)
    if os.path.exists(s0 + ".metrics") and os.path.exists(s1 + ".metrics"):
        m0, m1 = open(s0 + ".metrics").read(), open(s1 + ".metrics").read()
        d0 = counter(m0, "inquiry_gateway_sink_delivered_total", 'sink="kafka"') or 0.0
        d1 = counter(m1, "inquiry_gateway_sink_delivered_total", 'sink="kafka"') or 0.0
        run["kafka_delivered_per_s"] = round((d1 - d0) / window)
        for hop in ("ingest", "sink_kafka"):
            h0, h1 = dict(buckets(m0, hop)), buckets(m1, hop)
            delta = [(le, n - h0.get(le, 0.0)) for le, n in h1]
            for q, name in ((0.5, "p50"), (0.99, "p99"), (0.999, "p999")):
                v = quantile(delta, q)
                run[f"{hop}_{name}_us"] = None if v is None else round(v * 1e6)
    print(json.dumps(run))


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def best(path, system):
    runs = [r for r in load(path) if r.get("system") == system and "saturation" in r.get("label", "")]
    print(max(r["inquiries_per_s"] for r in runs))


def ms(us):
    return "n/a" if us is None else f"{us / 1000:.2f} ms"


def ratio(a, b):
    return "n/a" if not a or not b else f"{a / b:.2f}x"


def report(path):
    rows = load(path)
    meta = next((r for r in rows if "machine" in r), {})
    runs = [r for r in rows if "system" in r]
    sat = {}
    for r in runs:
        if "saturation" in r["label"] and (r["system"] not in sat or r["inquiries_per_s"] > sat[r["system"]]["inquiries_per_s"]):
            sat[r["system"]] = r
    rate = {(r["system"], int(r["label"].rsplit("-", 1)[1])): r for r in runs if "-rate-" in r["label"]}
    print(f"\nMachine: {meta.get('machine')}, kernel {meta.get('kernel')}, {meta.get('date')}, commit {meta.get('commit')}; "
          f"{meta.get('seconds_per_run')} s per run after {meta.get('warmup_seconds')} s warm-up\n")
    print("Saturation (closed loop, best of the connection counts):\n")
    print("| system | conns | inquiries/s | errors | p50 | p99 | p99.9 | server CPU µs/inquiry | broker CPU µs/inquiry | RSS | Kafka-acked/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in ("peer", "gateway", "bare"):
        r = sat.get(s)
        if r:
            print(f"| {s} | {r['connections']} | {r['inquiries_per_s']:,} | {r['errors'] + r['refused']} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
                  f"{ms(r['p999_us'])} | {r['cpu_us_per_inquiry']} | {r['kafka_cpu_us_per_inquiry']} | {r['rss_mib']} MiB | "
                  f"{r.get('kafka_delivered_per_s', r['inquiries_per_s'] if s == 'peer' else 'n/a')} |")
    print("\nOpen loop at 25/50/75% of the peer's saturation (latency from the scheduled send to the HTTP answer):\n")
    print("| system | load | offered/s | answered/s | p50 | p99 | p99.9 | server CPU µs/inquiry | RSS | gateway commit->Kafka ack p50 / p99 / p99.9 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in ("peer", "gateway", "bare"):
        for pct in (25, 50, 75):
            r = rate.get((s, pct))
            if not r:
                continue
            hop = (f"{ms(r.get('sink_kafka_p50_us'))} / {ms(r.get('sink_kafka_p99_us'))} / {ms(r.get('sink_kafka_p999_us'))}"
                   if s == "gateway" else "")
            print(f"| {s} | {pct}% | {r['target_rps']:.0f} | {r['inquiries_per_s']:,} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
                  f"{ms(r['p999_us'])} | {r['cpu_us_per_inquiry']} | {r['rss_mib']} MiB | {hop} |")
    g, p, b = sat.get("gateway"), sat.get("peer"), sat.get("bare")
    print("\nRatios:\n")
    if g and p:
        t = g["inquiries_per_s"] / p["inquiries_per_s"]
        print(f"- throughput gateway/peer: {t:.2f}x (target >= 2x: {'met' if t >= 2 else 'NOT met'})")
    for pct in (25, 50, 75):
        gr, pr = rate.get(("gateway", pct)), rate.get(("peer", pct))
        if gr and pr:
            line = ", ".join(f"{q} {ratio(gr[q + '_us'], pr[q + '_us'])}" for q in ("p50", "p99", "p999"))
            extra = ""
            if pct == 50:
                rr = gr["p99_us"] / pr["p99_us"]
                extra = f" (target p99 <= 0.5x: {'met' if rr <= 0.5 else 'NOT met'})"
            print(f"- latency gateway/peer at {pct}%: {line}{extra}")
    if g and b:
        t = g["inquiries_per_s"] / b["inquiries_per_s"]
        print(f"- throughput gateway/bare hyper: {t:.2f}x (target >= 0.5x: {'met' if t >= 0.5 else 'NOT met'})")
    if p and b:
        print(f"- throughput peer/bare hyper: {p['inquiries_per_s'] / b['inquiries_per_s']:.2f}x")
    if g and p:
        print(f"- CPU per inquiry at saturation gateway/peer: {ratio(g['cpu_us_per_inquiry'], p['cpu_us_per_inquiry'])}")
        gr, pr = rate.get(("gateway", 50)), rate.get(("peer", 50))
        if gr and pr:
            print(f"- at 50%: CPU per inquiry gateway/peer {ratio(gr['cpu_us_per_inquiry'], pr['cpu_us_per_inquiry'])}, "
                  f"RSS gateway/peer {ratio(gr['rss_mib'], pr['rss_mib'])}")


def machine(commit, secs, warm, conns, rate_conns):
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    print(json.dumps({"machine": f"{os.cpu_count()} cores, {mem / 1048576:.0f} GiB", "kernel": platform.release(),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
                      "seconds_per_run": int(secs), "warmup_seconds": int(warm), "saturation_conns": conns,
                      "rate_conns": int(rate_conns)}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"machine": machine, "merge": merge, "best": best, "report": report}[cmd](*args)
