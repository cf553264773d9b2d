;; Hostile: grows its memory until refused (contained by the memory cap: plugin_memory).
(module
  (memory (export "memory") 1)
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64)
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 256)) (i32.const -1))))
    (i64.const 0)))
