package igwplugin

import "encoding/binary"

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

func decodeAgents(buf []byte) []Agent {
	if len(buf) < 4 {
		return nil
	}
	count := binary.LittleEndian.Uint32(buf)
	agents := make([]Agent, 0, count)
	at := 4
	for i := uint32(0); i < count && at+4 <= len(buf); i++ {
		n := int(binary.LittleEndian.Uint32(buf[at:]))
		if at+4+n+12 > len(buf) {
			break
		}
		a := Agent{ID: string(buf[at+4 : at+4+n])}
		at += 4 + n
		a.Load = binary.LittleEndian.Uint32(buf[at:])
		a.Capacity = binary.LittleEndian.Uint32(buf[at+4:])
		a.Online = binary.LittleEndian.Uint32(buf[at+8:]) != 0
		at += 12
		agents = append(agents, a)
	}
	return agents
}
