;; A candidate that routes every inquiry of a batch to queue `review` (for shadow-mode tests).
;; Reads the count from the batch (offset 4) and writes one 17-byte route record per inquiry:
;; u32 len=13, status 0, queue "review" (u32 6 + bytes), then an empty assignee (u32 0).
(module
  (memory (export "memory") 2)
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param $ptr i32) (param $len i32) (result i64)
    (local $count i32) (local $i i32) (local $at i32)
    (local.set $count (i32.load (i32.add (local.get $ptr) (i32.const 4))))
    (i32.store (i32.const 65536) (local.get $count))
    (local.set $at (i32.const 65540))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (i32.store (local.get $at) (i32.const 15))
        (i32.store8 (i32.add (local.get $at) (i32.const 4)) (i32.const 0))
        (i32.store (i32.add (local.get $at) (i32.const 5)) (i32.const 6))
        (i64.store (i32.add (local.get $at) (i32.const 9)) (i64.const 0x77656976_6572)) ;; "review" little-endian + 2 zero bytes
        (i32.store (i32.add (local.get $at) (i32.const 15)) (i32.const 0))
        (local.set $at (i32.add (local.get $at) (i32.const 19)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.or (i64.shl (i64.const 65536) (i64.const 32))
            (i64.extend_i32_u (i32.sub (local.get $at) (i32.const 65536))))))
