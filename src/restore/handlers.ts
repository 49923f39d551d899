import type { StewardPeerHandlers } from '../rpc/types.js';
import type { RestoreMember } from './member.js';

export type RestorePeerHandlers = Pick<
  StewardPeerHandlers,
  'receiveSnapshot' | 'restorePrepare' | 'restoreSwap' | 'restoreFinish' | 'restoreAbort' | 'restoreMemberStatus'
>;

/** The member side of the peer API: the restore ID of every call is the header's, checked by the member. */
export function restorePeerHandlers(member: RestoreMember): RestorePeerHandlers {
  return {
    receiveSnapshot: async (announce, data, ctx) => {
      const staged = await member.receive(ctx.peer.restoreId, ctx.peer.caller, announce, data, ctx.signal);
      return {
        bytes: staged.bytes,
        sha256: staged.sha256,
        rawBytes: staged.rawBytes,
        rawSha256: staged.rawSha256,
        revision: staged.revision,
        totalKeys: staged.totalKeys,
      };
    },
    restorePrepare: (request, ctx) => member.prepare(ctx.peer.restoreId, request.stagingBytes),
    restoreSwap: (request, ctx) => member.swap(ctx.peer.restoreId, request, ctx.signal),
    restoreFinish: (ctx) => member.finish(ctx.peer.restoreId, ctx.signal),
    restoreAbort: (ctx) => member.abort(ctx.peer.restoreId, ctx.signal),
    restoreMemberStatus: async () => member.state(),
  };
}
