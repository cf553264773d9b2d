// Example routing plugin: the rules of plugins/examples/RULES.md in Go.
// Build: plugins/build.sh go (GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared).
package main

import (
	"strings"

	sdk "igwplugin"
)

func init() { sdk.Register(route) }

// main is required by the toolchain; a c-shared WASI reactor never runs it.
func main() {}

var priorities = map[string]int{"normal": 1, "high": 2, "urgent": 3}

func route(in *sdk.Inquiry) sdk.Outcome {
	text := strings.ToLower(in.Subject + " " + in.Body)
	if strings.Contains(text, "crypto giveaway") {
		return sdk.Outcome{Status: sdk.Routed, Queue: "spam", SpamReason: "giveaway"}
	}
	team := teamFor(in.BuyerLanguage, in.BuyerCountry)
	if team == "" {
		return sdk.Outcome{Status: sdk.Undecided}
	}
	out := sdk.Outcome{Status: sdk.Routed, Queue: team, Priority: "normal"}
	raise := func(to, tag string) {
		if priorities[to] > priorities[out.Priority] {
			out.Priority = to
		}
		out.Tags = append(out.Tags, tag)
	}
	if strings.Contains(text, "bulk order") || strings.Contains(text, "wholesale") {
		raise("high", "bulk")
	}
	if strings.Contains(text, "urgent") {
		raise("urgent", "urgent")
	}
	if strings.Contains(text, "refund") {
		raise("normal", "refund")
	}
	vip := in.Attribute("customer_tier") == "vip"
	if vip {
		raise("high", "vip")
		out.ReplyTemplate = "vip-ack"
	} else {
		out.ReplyTemplate = "ack-" + team
	}
	switch out.Priority {
	case "urgent":
		out.SLAPolicy = "sla-15m"
	case "high":
		out.SLAPolicy = "sla-1h"
	default:
		out.SLAPolicy = "sla-4h"
	}
	out.Language = in.BuyerLanguage
	out.Assignee = assign(team)
	return out
}

func teamFor(language, country string) string {
	language, _, _ = strings.Cut(language, "-")
	switch language {
	case "de", "fr", "it", "es", "nl", "pl":
		return "eu-sales"
	case "ja":
		return "jp-sales"
	case "zh":
		return "cn-sales"
	case "en":
		return "en-sales"
	}
	switch country {
	case "DE", "FR", "IT", "ES", "NL", "PL", "AT", "BE":
		return "eu-sales"
	case "JP":
		return "jp-sales"
	case "CN", "TW", "HK":
		return "cn-sales"
	case "US", "GB", "AU", "CA":
		return "en-sales"
	}
	return ""
}

// assign picks round-robin within team, skipping agents offline or at capacity.
func assign(team string) string {
	agents := sdk.Agents(team)
	n := int64(len(agents))
	if n == 0 {
		return ""
	}
	key := "rr:" + team
	start := ((sdk.KvGet(key) % n) + n) % n
	for i := int64(0); i < n; i++ {
		at := (start + i) % n
		if agents[at].Available() {
			sdk.KvAdd(key, at+1-start)
			return agents[at].ID
		}
	}
	return ""
}
