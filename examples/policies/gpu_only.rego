# The weights may only be loaded onto a GPU, never materialized on the CPU.
package cryptotensors

import rego.v1

default allow := false

allow if startswith(input.device, "cuda")

reason := sprintf("this model loads only onto a GPU, not %q", [input.device]) if not allow
