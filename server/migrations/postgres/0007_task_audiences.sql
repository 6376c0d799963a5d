-- Schema version 7 (PostgreSQL): a task declares the JWT audiences it will use (a JSON
-- array of strings, like `scopes`); JWT-SVIDs under it are minted only for those. Tasks
-- recorded before version 7 declared none ('[]'): they get no JWT-SVIDs.

ALTER TABLE tasks ADD COLUMN audiences TEXT NOT NULL DEFAULT '[]';
