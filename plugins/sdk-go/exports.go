//go:build wasip1

package igwplugin

import "unsafe"

var input, output []byte

//go:wasmexport igw_abi_version
func abiVersion() uint32 { return ABIVersion }

// igw_alloc gives the host a buffer for the next batch; it stays referenced until the next call.
//
//go:wasmexport igw_alloc
func alloc(size uint32) unsafe.Pointer {
	if cap(input) < int(size) {
		input = make([]byte, size)
	}
	input = input[:size]
	if size == 0 {
		return nil
	}
	return unsafe.Pointer(&input[0])
}

// igw_route routes the batch in the buffer and returns (out_ptr << 32) | out_len, or -1.
//
//go:wasmexport igw_route
func route(ptr unsafe.Pointer, size uint32) int64 {
	if router == nil {
		return -1
	}
	var ok bool
	output, ok = RouteBatch(unsafe.Slice((*byte)(ptr), size), router, output[:0])
	if !ok || len(output) == 0 {
		return -1
	}
	return int64(uintptr(unsafe.Pointer(&output[0])))<<32 | int64(len(output))
}
