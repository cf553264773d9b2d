// Package igwplugin is the Go SDK for inquiry-gateway routing plugins (ABI v1, docs/plugin-abi.md).
//
// Write a RouteFunc, register it with Register in an init function, and build a WASI reactor:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o router.wasm .
//
// The package exports igw_abi_version, igw_alloc and igw_route; the gateway calls _initialize first.
package igwplugin

import (
	"encoding/binary"
	"math/bits"
	"strings"
	"unsafe"
)

// ABIVersion is the ABI this SDK speaks.
const ABIVersion = 1

// Inquiry is one inquiry as the gateway sends it; absent values are empty strings.
//
// Its strings are views into the batch, valid while the RouteFunc runs: a plugin that keeps one
// for later (a cache, a global) must copy it with strings.Clone.
type Inquiry struct {
	ID, Channel, Account, MessageID, ConversationID, BuyerPseudonym, BuyerCountry, BuyerLanguage string
	Region, Subject, Body, OrderID                                                               string
	// ProductIDs holds one product reference per line.
	ProductIDs string
	// Attributes holds one key=value per line.
	Attributes             string
	OccurredAt, ReceivedAt string
}

// Attribute returns the value of attribute key, or "".
func (in *Inquiry) Attribute(key string) string {
	if strings.Contains(key, "=") {
		return "" // keys end at the first "=" of their line
	}
	rest := in.Attributes
	for rest != "" {
		line, next, _ := strings.Cut(rest, "\n")
		if len(line) > len(key) && line[len(key)] == '=' && line[:len(key)] == key {
			return line[len(key)+1:]
		}
		rest = next
	}
	return ""
}

// Status of an Outcome.
type Status uint8

const (
	// Routed: the plugin decided.
	Routed Status = 0
	// Undecided: the next plugin or the gateway's fallback route decides.
	Undecided Status = 1
	// Failed: the plugin failed on this inquiry; the gateway dead-letters it.
	Failed Status = 2
)

// Outcome is a plugin's answer for one inquiry. For Routed, Queue is required and Priority is one
// of low, normal, high, urgent ("" means normal). For Failed, Detail says why.
type Outcome struct {
	Status                                                 Status
	Queue, Assignee, Priority                              string
	Tags                                                   []string
	Language, ReplyTemplate, SLAPolicy, SpamReason, Detail string
}

// RouteFunc routes one inquiry.
type RouteFunc func(in *Inquiry) Outcome

var router RouteFunc

// Register sets the plugin's routing function.
func Register(route RouteFunc) { router = route }

// RouteBatch decodes a batch, routes every inquiry and appends the encoded results to out.
func RouteBatch(data []byte, route RouteFunc, out []byte) ([]byte, bool) {
	if len(data) < 8 || binary.LittleEndian.Uint32(data) != ABIVersion {
		return out, false
	}
	count := binary.LittleEndian.Uint32(data[4:])
	out = binary.LittleEndian.AppendUint32(out, count)
	at := 8
	var in Inquiry
	fields := [16]*string{&in.ID, &in.Channel, &in.Account, &in.MessageID, &in.ConversationID,
		&in.BuyerPseudonym, &in.BuyerCountry, &in.BuyerLanguage, &in.Region, &in.Subject, &in.Body,
		&in.OrderID, &in.ProductIDs, &in.Attributes, &in.OccurredAt, &in.ReceivedAt}
	for i := uint32(0); i < count; i++ {
		if at+4 > len(data) {
			return out, false
		}
		end := at + 4 + int(binary.LittleEndian.Uint32(data[at:]))
		if end > len(data) {
			return out, false
		}
		p := at + 4
		for _, field := range fields {
			*field = ""
			if p+4 > end {
				continue
			}
			n := int(binary.LittleEndian.Uint32(data[p:]))
			if p+4+n > end {
				return out, false
			}
			if n > 0 {
				// A view into the batch, not a copy (see Inquiry).
				*field = unsafe.String(&data[p+4], n)
			}
			p += 4 + n
		}
		out = appendOutcome(out, route(&in))
		at = end
	}
	return out, true
}

func appendStr(out []byte, s string) []byte {
	out = binary.LittleEndian.AppendUint32(out, uint32(len(s)))
	return append(out, s...)
}

func appendOutcome(out []byte, o Outcome) []byte {
	start := len(out)
	out = append(out, 0, 0, 0, 0, byte(o.Status))
	switch o.Status {
	case Routed:
		out = appendStr(out, o.Queue)
		out = appendStr(out, o.Assignee)
		out = appendStr(out, o.Priority)
		// The tags, one per line, written in place.
		tagsLen := 0
		for i, tag := range o.Tags {
			if i > 0 {
				tagsLen++
			}
			tagsLen += len(tag)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(tagsLen))
		for i, tag := range o.Tags {
			if i > 0 {
				out = append(out, '\n')
			}
			out = append(out, tag...)
		}
		for _, s := range [...]string{o.Language, o.ReplyTemplate, o.SLAPolicy, o.SpamReason} {
			out = appendStr(out, s)
		}
	case Failed:
		out = appendStr(out, o.Detail)
	}
	binary.LittleEndian.PutUint32(out[start:], uint32(len(out)-start-4))
	return out
}

// Keywords is a set of up to 64 ASCII keywords matched ignoring ASCII case in one pass over a
// text, without lower-casing a copy of it (strings.ToLower allocates and folds Unicode).
type Keywords struct {
	words        []string
	startingWith [256]uint64
}

// NewKeywords builds the set; it panics on more than 64 words or an empty or non-ASCII one
// (build it once, in a package variable).
func NewKeywords(words ...string) *Keywords {
	if len(words) > 64 {
		panic("igwplugin: at most 64 keywords")
	}
	k := &Keywords{words: words}
	for i, word := range words {
		if word == "" {
			panic("igwplugin: empty keyword")
		}
		for j := 0; j < len(word); j++ {
			if word[j] >= 0x80 {
				panic("igwplugin: keywords are ASCII")
			}
		}
		k.startingWith[lowerASCII(word[0])] |= 1 << i
		k.startingWith[upperASCII(word[0])] |= 1 << i
	}
	return k
}

// Find reports, for each keyword in order, whether it occurs in text (bit i for keyword i).
func (k *Keywords) Find(text string) uint64 {
	all := uint64(1)<<len(k.words) - 1
	if len(k.words) == 64 {
		all = ^uint64(0)
	}
	table := &k.startingWith
	var found uint64
	for at := 0; at < len(text); at++ {
		candidates := table[text[at]]
		if candidates == 0 {
			continue
		}
		candidates &^= found
		for candidates != 0 {
			i := bits.TrailingZeros64(candidates)
			candidates &^= 1 << i
			word := k.words[i]
			if len(text)-at >= len(word) && equalFoldASCII(text[at:at+len(word)], word) {
				found |= 1 << i
				if found == all {
					return found
				}
			}
		}
	}
	return found
}

// equalFoldASCII reports whether a and b (of one length) are equal ignoring ASCII case.
func equalFoldASCII(a, b string) bool {
	for i := 0; i < len(b); i++ {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(b byte) byte {
	if 'A' <= b && b <= 'Z' {
		return b + 'a' - 'A'
	}
	return b
}

func upperASCII(b byte) byte {
	if 'a' <= b && b <= 'z' {
		return b - ('a' - 'A')
	}
	return b
}
