package igwplugin

import (
	"strings"
	"testing"
)

func TestKeywordsFindWhatContainsFindsIgnoringASCIICase(t *testing.T) {
	words := []string{"crypto giveaway", "bulk order", "urgent", "refund"}
	set := NewKeywords(words...)
	for _, text := range []string{
		"Bulk Order of 500, URGENT",
		"Ich möchte eine Rückerstattung (refund) — bitte",
		"bulk orde",
		"ururgent refun",
		"サイズ urgent について",
		"",
		"CRYPTO GIVEAWAY bulk orderrefund",
	} {
		var want uint64
		for i, word := range words {
			if strings.Contains(strings.ToLower(text), word) {
				want |= 1 << i
			}
		}
		if got := set.Find(text); got != want {
			t.Errorf("Find(%q) = %b, want %b", text, got, want)
		}
	}
}

func TestAttributesAreFoundByTheirWholeKey(t *testing.T) {
	in := Inquiry{Attributes: "tier=vip\ncustomer_tier=gold\nempty=\nlast=x=y"}
	for key, want := range map[string]string{
		"customer_tier": "gold", "tier": "vip", "empty": "", "last": "x=y", "last=x": "", "tie": "",
	} {
		if got := in.Attribute(key); got != want {
			t.Errorf("Attribute(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestABatchRoutesWithViewsIntoIt(t *testing.T) {
	batch := []byte{1, 0, 0, 0, 1, 0, 0, 0}
	record := []byte{}
	for i := 0; i < 16; i++ {
		field := ""
		if i == 10 {
			field = "urgent please"
		}
		record = append(record, byte(len(field)), 0, 0, 0)
		record = append(record, field...)
	}
	batch = append(batch, byte(len(record)), 0, 0, 0)
	batch = append(batch, record...)
	out, ok := RouteBatch(batch, func(in *Inquiry) Outcome {
		return Outcome{Status: Routed, Queue: "q", Tags: []string{"a", "b"}, SLAPolicy: in.Body}
	}, nil)
	if !ok {
		t.Fatal("the batch was refused")
	}
	// count, record length, status, queue "q", assignee "", priority "", tags "a\nb", language,
	// template, sla "urgent please", spam reason.
	want := "\x01\x00\x00\x00" + "\x32\x00\x00\x00" + "\x00" + "\x01\x00\x00\x00q" + "\x00\x00\x00\x00" +
		"\x00\x00\x00\x00" + "\x03\x00\x00\x00a\nb" + "\x00\x00\x00\x00" + "\x00\x00\x00\x00" +
		"\x0d\x00\x00\x00urgent please" + "\x00\x00\x00\x00"
	if string(out) != want {
		t.Errorf("results %q, want %q", out, want)
	}
}

func TestAgentListsAreReadIntoTheGivenSlice(t *testing.T) {
	encode := func(ids ...string) []byte {
		buf := []byte{byte(len(ids)), 0, 0, 0}
		for i, id := range ids {
			buf = append(buf, byte(len(id)), 0, 0, 0)
			buf = append(buf, id...)
			buf = append(buf, byte(i), 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0)
		}
		return buf
	}
	agents := decodeAgents(encode("anna", "ben"), nil)
	if len(agents) != 2 || agents[1].ID != "ben" || agents[1].Load != 1 || !agents[1].Available() {
		t.Fatalf("agents %+v", agents)
	}
	again := decodeAgents(encode("chloe"), agents)
	if len(again) != 1 || again[0].ID != "chloe" || &again[0] != &agents[0] {
		t.Fatalf("the slice is not reused: %+v", again)
	}
	if got := decodeAgents(encode("dan")[:9], again); len(got) != 0 {
		t.Fatalf("a truncated list read as %+v", got)
	}
}

func TestSettingsAreDecodedAndABrokenListReadsAsNone(t *testing.T) {
	var buf []byte
	u32 := func(n int) { buf = append(buf, byte(n), byte(n>>8), byte(n>>16), byte(n>>24)) }
	str := func(s string) { u32(len(s)); buf = append(buf, s...) }
	u32(2)
	str("default_team")
	str("global-sales")
	str("vip_min")
	str("500")
	got := decodeSettings(buf)
	if len(got) != 2 || got["default_team"] != "global-sales" || got["vip_min"] != "500" {
		t.Fatalf("decodeSettings = %v", got)
	}
	if got := decodeSettings(buf[:len(buf)-1]); len(got) != 0 {
		t.Errorf("truncated list = %v, want none", got)
	}
	if got := decodeSettings(nil); len(got) != 0 {
		t.Errorf("empty buffer = %v, want none", got)
	}
}
