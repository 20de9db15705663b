-- Reserved: the certs branch (issue 19, device certificates) owns migration 0012; its file replaces this one
-- when the branches merge (delete this file then). Nothing here, so that 0013 follows without a gap.
SELECT 1;
