# The caller must present a verified TEE attestation (passed as policy_input=).
package cryptotensors

import rego.v1

default allow := false

allow if {
	input.claims.tee.type in {"sev-snp", "tdx", "nvidia-cc"}
	input.claims.tee.verified == true
}

reason := "a verified TEE attestation (claims.tee) is required" if not allow
