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
	"strings"
)

// ABIVersion is the ABI this SDK speaks.
const ABIVersion = 1

// Inquiry is one inquiry as the gateway sends it; absent values are empty strings.
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
	for _, line := range strings.Split(in.Attributes, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && k == key {
			return v
		}
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
			*field = string(data[p+4 : p+4+n])
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
		for _, s := range []string{o.Queue, o.Assignee, o.Priority, strings.Join(o.Tags, "\n"),
			o.Language, o.ReplyTemplate, o.SLAPolicy, o.SpamReason} {
			out = appendStr(out, s)
		}
	case Failed:
		out = appendStr(out, o.Detail)
	}
	binary.LittleEndian.PutUint32(out[start:], uint32(len(out)-start-4))
	return out
}
