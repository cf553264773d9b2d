//go:build wasip1

package igwplugin

import "unsafe"

//go:wasmimport igw log
func hostLog(level int32, ptr unsafe.Pointer, size uint32)

//go:wasmimport igw counter_add
func hostCounterAdd(ptr unsafe.Pointer, size uint32, delta int64)

//go:wasmimport igw now_ms
func hostNowMs() int64

//go:wasmimport igw agents
func hostAgents(team unsafe.Pointer, teamLen uint32, out unsafe.Pointer, outCap uint32) uint32

//go:wasmimport igw kv_get
func hostKvGet(ptr unsafe.Pointer, size uint32) int64

//go:wasmimport igw kv_add
func hostKvAdd(ptr unsafe.Pointer, size uint32, delta int64) int64

//go:wasmimport igw settings
func hostSettings(out unsafe.Pointer, outCap uint32) uint32

func strPtr(s string) (unsafe.Pointer, uint32) {
	if len(s) == 0 {
		return nil, 0
	}
	return unsafe.Pointer(unsafe.StringData(s)), uint32(len(s))
}

// Log writes a rate-limited log line (capability "log").
func Log(level int32, message string) {
	p, n := strPtr(message)
	hostLog(level, p, n)
}

// CounterAdd adds delta to the plugin counter name (capability "counters").
func CounterAdd(name string, delta int64) {
	p, n := strPtr(name)
	hostCounterAdd(p, n, delta)
}

// NowMs returns milliseconds since the Unix epoch (capability "clock").
func NowMs() int64 { return hostNowMs() }

// agentsBuf receives the host's answer to Agents; agentsList is the list returned, read from it.
var (
	agentsBuf  = make([]byte, 512)
	agentsList []Agent
)

// Agents returns the agents of team in directory order (capability "agents"). The list and its
// IDs are reused by the next call: strings.Clone an ID kept beyond it (an Outcome's Assignee is
// encoded before the next inquiry is routed, so it needs no copy).
func Agents(team string) []Agent {
	p, n := strPtr(team)
	need := hostAgents(p, n, unsafe.Pointer(&agentsBuf[0]), uint32(len(agentsBuf)))
	if int(need) > len(agentsBuf) {
		agentsBuf = make([]byte, need)
		need = hostAgents(p, n, unsafe.Pointer(&agentsBuf[0]), uint32(len(agentsBuf)))
	}
	agentsList = decodeAgents(agentsBuf[:need], agentsList)
	return agentsList
}

// KvGet returns the value of key in the plugin's key-value map, 0 when absent (capability "kv").
func KvGet(key string) int64 {
	p, n := strPtr(key)
	return hostKvGet(p, n)
}

// KvAdd adds delta to key and returns the new value (capability "kv").
func KvAdd(key string, delta int64) int64 {
	p, n := strPtr(key)
	return hostKvAdd(p, n, delta)
}

// settings holds the plugin's settings once read (they are fixed for the life of an instance).
var settings map[string]string

// Settings returns the plugin's settings from the gateway's configuration: strings as they are,
// other values as JSON text (no capability needed). The map is shared: do not change it.
func Settings() map[string]string {
	if settings == nil {
		buf := make([]byte, 256)
		need := hostSettings(unsafe.Pointer(&buf[0]), uint32(len(buf)))
		if int(need) > len(buf) {
			buf = make([]byte, need)
			need = hostSettings(unsafe.Pointer(&buf[0]), uint32(len(buf)))
		}
		settings = decodeSettings(buf[:min(int(need), len(buf))])
	}
	return settings
}

// Setting returns the value of the setting key, or "" when it is not set.
func Setting(key string) string { return Settings()[key] }
