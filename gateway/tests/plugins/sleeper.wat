;; Hostile: asks WASI to sleep for 60 s in igw_route (a host call the deadline cannot interrupt;
;; the gateway's poll_oneoff refuses to wait), then refuses the batch.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; One clock subscription at offset 0 (48 bytes): userdata 0, tag 0 (clock), clock id 1
  ;; (monotonic) at 16, timeout 60e9 ns at 24, precision 0, flags 0 (relative).
  (data (i32.const 16) "\01\00\00\00\00\00\00\00\00\58\47\f8\0d\00\00\00")
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64)
    (drop (call $poll (i32.const 0) (i32.const 512) (i32.const 1) (i32.const 600)))
    (i64.const -1)))
