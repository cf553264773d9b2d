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

// rank orders the priorities the rules use.
func rank(priority string) int {
	switch priority {
	case "normal":
		return 1
	case "high":
		return 2
	case "urgent":
		return 3
	}
	return 0
}

// The keywords of the rules, matched ignoring ASCII case in one pass.
var keywords = sdk.NewKeywords("crypto giveaway", "bulk order", "wholesale", "urgent", "refund")

const (
	giveaway = 1 << iota
	bulkOrder
	wholesale
	urgent
	refund
)

// team is a team and the names the rules derive from it.
type team struct{ name, replyTemplate, roundRobinKey string }

var (
	euSales = &team{"eu-sales", "ack-eu-sales", "rr:eu-sales"}
	jpSales = &team{"jp-sales", "ack-jp-sales", "rr:jp-sales"}
	cnSales = &team{"cn-sales", "ack-cn-sales", "rr:cn-sales"}
	enSales = &team{"en-sales", "ack-en-sales", "rr:en-sales"}
)

func route(in *sdk.Inquiry) sdk.Outcome {
	found := keywords.Find(in.Subject + " " + in.Body)
	if found&giveaway != 0 {
		return sdk.Outcome{Status: sdk.Routed, Queue: "spam", SpamReason: "giveaway"}
	}
	team := teamFor(in.BuyerLanguage, in.BuyerCountry)
	if team == nil {
		team = defaultTeam()
	}
	if team == nil {
		return sdk.Outcome{Status: sdk.Undecided}
	}
	out := sdk.Outcome{Status: sdk.Routed, Queue: team.name, Priority: "normal", Tags: make([]string, 0, 4)}
	raise := func(to, tag string) {
		if rank(to) > rank(out.Priority) {
			out.Priority = to
		}
		out.Tags = append(out.Tags, tag)
	}
	if found&(bulkOrder|wholesale) != 0 {
		raise("high", "bulk")
	}
	if found&urgent != 0 {
		raise("urgent", "urgent")
	}
	if found&refund != 0 {
		raise("normal", "refund")
	}
	vip := in.Attribute("customer_tier") == "vip"
	if vip {
		raise("high", "vip")
		out.ReplyTemplate = "vip-ack"
	} else {
		out.ReplyTemplate = team.replyTemplate
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

// The team of the "default_team" setting (nil when unset), read once: settings are fixed for
// the life of an instance.
var (
	defaultTeamRead bool
	defaultTeamOf   *team
)

func defaultTeam() *team {
	if !defaultTeamRead {
		defaultTeamRead = true
		if name := sdk.Setting("default_team"); name != "" {
			defaultTeamOf = &team{name, "ack-" + name, "rr:" + name}
		}
	}
	return defaultTeamOf
}

func teamFor(language, country string) *team {
	language, _, _ = strings.Cut(language, "-")
	switch language {
	case "de", "fr", "it", "es", "nl", "pl":
		return euSales
	case "ja":
		return jpSales
	case "zh":
		return cnSales
	case "en":
		return enSales
	}
	switch country {
	case "DE", "FR", "IT", "ES", "NL", "PL", "AT", "BE":
		return euSales
	case "JP":
		return jpSales
	case "CN", "TW", "HK":
		return cnSales
	case "US", "GB", "AU", "CA":
		return enSales
	}
	return nil
}

// assign picks round-robin within team, skipping agents offline or at capacity.
func assign(team *team) string {
	agents := sdk.Agents(team.name)
	n := int64(len(agents))
	if n == 0 {
		return ""
	}
	key := team.roundRobinKey
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
