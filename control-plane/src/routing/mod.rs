//! Routing rules: validation (fields, operators, strategies, regex, CIDR) and CRUD of rules/.
