package igwplugin

import (
	"encoding/binary"
	"unsafe"
)

// Agent is an agent of a team as the gateway's directory knows it.
type Agent struct {
	ID             string
	Load, Capacity uint32
	Online         bool
}

// Available reports whether the agent is online and below capacity.
func (a Agent) Available() bool { return a.Online && a.Load < a.Capacity }

// Log levels for Log.
const (
	LevelDebug = 0
	LevelInfo  = 1
	LevelWarn  = 2
	LevelError = 3
)

// decodeAgents reads an agent list into agents[:0]; the IDs are views into buf.
func decodeAgents(buf []byte, agents []Agent) []Agent {
	agents = agents[:0]
	if len(buf) < 4 {
		return agents
	}
	count := binary.LittleEndian.Uint32(buf)
	at := 4
	for i := uint32(0); i < count && at+4 <= len(buf); i++ {
		n := int(binary.LittleEndian.Uint32(buf[at:]))
		if at+4+n+12 > len(buf) {
			break
		}
		a := Agent{}
		if n > 0 {
			a.ID = unsafe.String(&buf[at+4], n)
		}
		at += 4 + n
		a.Load = binary.LittleEndian.Uint32(buf[at:])
		a.Capacity = binary.LittleEndian.Uint32(buf[at+4:])
		a.Online = binary.LittleEndian.Uint32(buf[at+8:]) != 0
		at += 12
		agents = append(agents, a)
	}
	return agents
}

// decodeSettings reads a settings list (u32 count, then key and value strings) into a new map;
// data that is not a valid list reads as no settings. The strings are copies.
func decodeSettings(buf []byte) map[string]string {
	settings := map[string]string{}
	if len(buf) < 4 {
		return settings
	}
	count := binary.LittleEndian.Uint32(buf)
	at := 4
	str := func() (string, bool) {
		if at+4 > len(buf) {
			return "", false
		}
		n := int(binary.LittleEndian.Uint32(buf[at:]))
		if n > len(buf)-at-4 {
			return "", false
		}
		s := string(buf[at+4 : at+4+n])
		at += 4 + n
		return s, true
	}
	for i := uint32(0); i < count; i++ {
		key, ok := str()
		value, ok2 := str()
		if !ok || !ok2 {
			return map[string]string{}
		}
		settings[key] = value
	}
	return settings
}
