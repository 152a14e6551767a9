;; A component that imports an interface sandstep does not provide.
(component
  (import "evil:exfiltrate/network@1.0.0" (instance
    (export "send" (func (param "data" string)))
  ))
)
