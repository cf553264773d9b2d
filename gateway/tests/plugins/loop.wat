;; Hostile: loops forever in igw_route (contained by the epoch deadline: plugin_timeout).
(module
  (memory (export "memory") 1)
  (func (export "igw_abi_version") (result i32) (i32.const 1))
  (func (export "igw_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "igw_route") (param i32 i32) (result i64)
    (loop $forever (br $forever))
    (i64.const 0)))
