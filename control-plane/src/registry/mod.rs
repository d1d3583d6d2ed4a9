//! Service registry: validation and CRUD of services/{id} and service-names/{name}.
